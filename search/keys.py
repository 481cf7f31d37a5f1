"""The names under which a study and its trials record what happened (Optuna user attributes).

They are a stored format: the dashboard, the closing table, ``hematune
worker``, the report, the releases and the benchmarks read what the runner and
the objective wrote, possibly with another hematune version and on another
machine. One name per constant here, so a reader and a writer cannot drift
apart by a typo, and renaming one is a visible, deliberate change.
"""

# --- on the study, once, when it is created (search/runner.py, search/data.py) ---
DATA_ROOT = "data_root"  # the DATA folder the study was created on
LAYOUT = "layout"  # "train_test" or "flat"
CLASSES = "classes"
DATA_FINGERPRINT = "data_fingerprint"
DATA_FINGERPRINT_RULE = "data_fingerprint_rule"  # how the fingerprint was computed (absent: file times)
SPLIT_RULE = "split_rule"
SPLIT_SEED = "split_seed"
VAL_FRACTION = "val_fraction"
TRAIN_COUNTS = "train_counts"  # images per class
VAL_COUNTS = "val_counts"
TEST_COUNTS = "test_counts"
SKIPPED_NON_IMAGES = "skipped_non_images"
MODEL = "model"  # MODEL=: a family or "all"
SPACE = "space"  # the search space as sampled (search/space.py as_dict)
SPACE_FINGERPRINT = "space_fingerprint"
SPLIT_HASH = "split_hash"
SPLIT_MANIFEST = "split_manifest"
PRUNER = "pruner"
SEED = "seed"  # on the study: SEED=; on a trial: that trial's seed
WEIGHTS_POLICY = "weights_policy"
WORKER_SETTINGS = "worker_settings"  # SearchConfig.to_record(): what a joining worker trains with
CREATED = "created"
SKIPPED_IMAGES = "skipped_images"  # unusable files: path → reason

# --- on each trial (search/objective.py, search/annotate.py, search/storage.py) ---
FAMILY = "family"
MAX_EPOCHS = "max_epochs"
BACKEND = "backend"
DEVICE = "device"
PRECISION = "precision"
VERSIONS = "versions"
WEIGHTS_ORIGIN = "weights_origin"
PARAM_COUNT = "param_count"
UNFROZEN_LAYERS = "unfrozen_layers"
VAL_ACCURACY_PER_EPOCH = "val_accuracy_per_epoch"
VAL_LOSS_PER_EPOCH = "val_loss_per_epoch"
EPOCHS_TRAINED = "epochs_trained"
WALL_SECONDS = "wall_seconds"
EPOCH_END_SECONDS = "epoch_end_seconds"  # seconds from the trial's start to each epoch's end (the TIMEOUT estimate)
BEST_EPOCH = "best_epoch"
BEST_VAL_ACCURACY = "best_val_accuracy"
BEST_VAL_LOSS = "best_val_loss"
MODEL_SAVED = "model_saved"
PRUNE_REASON = "prune_reason"
STOPPED_BY = "stopped_by"
FAIL_REASON = "fail_reason"  # one line, for people
FAIL_TRACEBACK = "fail_traceback"  # the whole traceback, for maintainers
ANNOTATION_ERROR = "annotation_error"
VAL_MACRO_F1 = "val_macro_f1"
LATENCY_MS_BATCH1 = "latency_ms_batch1"
RETRY_OF = "retry_of"
RETRY_REASON = "retry_reason"
RETRY_HISTORY = "retry_history"

# --- `hematune select` (search/select.py): on the linked study <study>-select and its trials ---
SELECT_PARENT = "select_parent"  # on the select study: the searched study whose finalists it cross-validates
SELECT_FOLDS = "select_folds"  # K
SELECT_FOLD_HASH = "select_fold_hash"  # which files went to which fold (folds.json), on the study and each trial
SELECT_SEED = "select_seed"  # the fold assignment's seed
SOURCE_TRIAL = "source_trial"  # on a select trial: the searched trial whose configuration it re-trains
FOLD_SCORES = "fold_scores"  # {fold: val accuracy at the last epoch}
FOLD_EPOCHS = "fold_epochs"  # epochs each fold model is trained for (the searched trial's best epoch count)
CV_MEAN = "cv_mean"
CV_SD = "cv_sd"
SELECT_WINNER = "select_winner"  # on the select study: the searched trial chosen on the CV mean
SELECT_PRUNED_BY = "select_pruned_by"  # on a pruned select trial: "worse" (Wilcoxon over folds) or "budget" (TIMEOUT)
SEARCH_VALUE = "search_value"  # on a select trial: its searched trial's value (best-epoch group-val accuracy)
PARAMS = "params"  # on a select trial: the configuration it re-trains (flat, FIX= values included)
