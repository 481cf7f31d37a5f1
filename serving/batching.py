"""Run the model on the images of concurrent requests together.

One inference thread calls the model; requests put their decoded images in a
queue and wait. While the thread runs one batch, new requests pile up, and the
next batch takes all of them (up to ``max_images``). A lone request therefore
waits for nothing — no timer, no added latency — while under load the fixed
cost of a model call is paid once per batch instead of once per request
(``bench/serving.py`` measures both settings; ``max_images=1`` turns the
merging off). Requests of different release versions (during a champion
switch) never share a batch: each request finishes on the model it started
with.

The model runs through Keras's compiled predict step (``predict_on_batch``:
a ``tf.function`` on TensorFlow, ``jit`` on JAX) rather than an eager call:
the same layers and weights, and on the CPU release 1.3 ms instead of 9 ms for
one image (same outputs to the last bit in that check). Batches are padded to
a power of two, so a backend that compiles per shape (JAX/XLA) compiles at
most seven shapes up to 64 images, all of them before the server says ready.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

WARM_UP_UP_TO = 64  # images; the default --max-files and --max-batch


def classify(model, pixels: np.ndarray) -> np.ndarray:
    """Softmax outputs (n, classes) for uint8 images (n, size, size, 3), through the compiled predict step."""
    import keras

    n = len(pixels)
    batch = np.zeros((1 << max(n - 1, 0).bit_length(), *pixels.shape[1:]), dtype="float32")
    batch[:n] = pixels
    return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)), dtype="float32")[:n]


def warm_up(model, image_size: int) -> None:
    """Compile every padded batch shape now, so the first requests do not pay for it."""
    size = 1
    while size <= WARM_UP_UP_TO:
        classify(model, np.zeros((size, image_size, image_size, 3), dtype=np.uint8))
        size *= 2


@dataclass
class _Job:
    release: object  # LoadedRelease
    pixels: np.ndarray  # (n, size, size, 3) uint8
    done: asyncio.Future


class Batcher:
    def __init__(self, max_images: int = 64):
        self.max_images = max(1, int(max_images))
        self._pending: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hematune-inference")
        self.batches = 0  # model calls so far (for /health and the load test)
        self.images = 0

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    async def predict(self, release, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities, (n, classes), for these images on this release's model."""
        job = _Job(release, pixels, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wake.set()
        return await job.done

    def _next_batch(self) -> list[_Job]:
        batch = [self._pending.popleft()]
        count = len(batch[0].pixels)
        while (self._pending and self._pending[0].release is batch[0].release
               and count + len(self._pending[0].pixels) <= self.max_images):
            job = self._pending.popleft()
            batch.append(job)
            count += len(job.pixels)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [job for job in self._next_batch() if not job.done.done()]  # skip clients that left
                if not batch:
                    continue
                pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([j.pixels for j in batch])
                model = batch[0].release.model
                try:
                    probs = await loop.run_in_executor(self._thread, classify, model, pixels)
                except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which answers 500
                    for job in batch:
                        if not job.done.done():
                            job.done.set_exception(exc)
                    continue
                self.batches += 1
                self.images += len(pixels)
                start = 0
                for job in batch:
                    if not job.done.done():
                        job.done.set_result(probs[start:start + len(job.pixels)])
                    start += len(job.pixels)
