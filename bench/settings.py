"""How big each benchmark is: the full run (≤ 60 min on 2 CPU cores) and QUICK (a few minutes).

All sizes live here so the report can print exactly what was run, and so
the budget of a full run can be reasoned about in one place.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# One fixed, mid-sized configuration of the default CNN space (studies/spaces/cnn.yaml) for the
# pipeline-overhead section: every parameter fixed, so both arms train exactly the same model.
OVERHEAD_PARAMS = {
    "image_size": 48, "learning_rate": 1.0e-3, "aug_strength": 0.3, "batch_size": 64, "weight_decay": 1.0e-4,
    "label_smoothing": 0.05, "blocks": 3, "base_width": 16, "kernel_size": 3, "batch_norm": True, "dropout": 0.2,
    "dense_units": 64,
}

# Section 6 (training throughput): one fixed trial per device. On a CPU the pipeline-overhead model above;
# aug_strength and PRECISION are set per arm (bench/throughput.py). On a GPU the 5-block CNN issue 10 measured
# on an H100 (6.5 M parameters at 96 px, batch 128; ../shared/gpu/README.md), so the numbers compare.
THROUGHPUT_CPU_PARAMS = {k: v for k, v in OVERHEAD_PARAMS.items() if k != "aug_strength"}
THROUGHPUT_GPU_PARAMS = {
    "image_size": 96, "learning_rate": 1.0e-3, "batch_size": 128, "weight_decay": 1.0e-4, "label_smoothing": 0.05,
    "blocks": 5, "base_width": 32, "kernel_size": 5, "batch_norm": True, "dropout": 0.2, "dense_units": 0,
}


@dataclass(frozen=True)
class Settings:
    quick: bool
    # Section 1 — pipeline overhead, on the full reference TRAIN (QUICK: the subsample)
    overhead_epochs: int = 2  # per repetition; epochs 2.. are the steady-state epochs
    overhead_reps: int = 3
    decode_cold_reps: int = 2
    decode_warm_reps: int = 5
    overhead_full_train: bool = True
    # The TRAIN data of sections 2–4: None = the whole reference TRAIN; a number = a class-balanced
    # subsample of that many files per class, taken round-robin over the class's source cells (groups
    # stay whole on one side of the split). The reference TRAIN holds only 277 source cells; a subsample
    # keeps every cell but fewer augmented copies, and at 300 files per class no search in a 50-second
    # budget left chance level (the first committed run), so the full run uses all of TRAIN.
    files_per_class: int | None = None
    groups_per_class: int | None = None  # None: all groups
    # FIX=image_size for sections 2–4: one decoded array for every method; 32 px (below the space's 48/64)
    # so that an epoch on the full TRAIN takes ~5–8 s on 2 cores and a 9-epoch trial about a minute
    search_image_size: int = 32
    search_max_epochs: int = 9  # section 2, per trial; Hyperband rungs 1, 3, 9 epochs (reduction factor 3)
    tuner_max_epochs: int = 9  # sections 3–4: the same cap, so KerasTuner's Hyperband runs its 1/3/9 brackets
    # Section 2 — pruning
    pruning_trials: int = 6  # 5 TPE start-up trials + 1: what fits with the unpruned twin in ~15 min
    pruning_seeds: tuple[int, ...] = (0,)
    # Section 3 — hematune vs KerasTuner, same wall budget per run
    tuner_budget_s: float = 120.0  # 12 runs ≈ 24 min plus TEST scoring
    tuner_seeds: tuple[int, ...] = (0, 1, 2)
    target_fraction: float = 0.95  # target = this × the best group-val accuracy any run reached
    # Section 4 — leaky split search, same budget as one section-3 run
    leaky_seeds: tuple[int, ...] = (0, 1, 2)  # as many as the group-aware runs of section 3
    # Section 5 — inference
    latency_reps: int = 30
    throughput_reps: int = 3
    throughput_batch: int = 64
    family_image_size: int = 96  # the smallest size in the backbone spaces (CPU-sized)
    families: tuple[str, ...] = field(default=("cnn", "mobilenet", "efficientnet", "resnet", "vgg"))
    # Section 6 — training throughput: per backend (each in its own process) and arm, one trial of this many
    # epochs; epoch 1 (compilation) apart, the median of the others is the steady-state epoch
    training_epochs: int = 5
    training_backends: tuple[str, ...] = ("tensorflow", "jax")
    training_full_train: bool = True  # the whole reference TRAIN (QUICK: the subsample)

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Settings(quick=False)

QUICK = Settings(
    quick=True,
    overhead_epochs=2, overhead_reps=2, decode_cold_reps=1, decode_warm_reps=2, overhead_full_train=False,
    files_per_class=16, groups_per_class=10, search_image_size=32, search_max_epochs=3, tuner_max_epochs=2,
    pruning_trials=4, pruning_seeds=(0,),
    tuner_budget_s=12.0, tuner_seeds=(0, 1), leaky_seeds=(0,),
    latency_reps=5, throughput_reps=2, throughput_batch=16, family_image_size=64,
    training_epochs=2, training_full_train=False,
)
