"""Evaluation: splits, embeddings, linear probe, fine-tuning, network identification,
attention maps and the long result table.

Names are resolved lazily (PEP 562), so importing ``bsym.evaluate`` or its command line
(``bsym.evaluate.cli``) imports neither torch nor scikit-learn.

Modules
-------
splits
    Fixed, hashed split files (repeated stratified K-fold, group-aware,
    leave-one-site-out, inner folds, the pretraining cohort).
embeddings
    Frozen-encoder embeddings per scan and subject, cached by checkpoint and data hash.
probe
    Linear probe (StandardScaler + LogisticRegression / Ridge, inner-CV regularisation).
foldtrain
    Train on each outer fold, early-stop on an inner split, test once (shared loop).
finetune
    Encoder + linear head trained through :func:`bsym.train.engine.train`.
supervised
    Supervised baselines trained from scratch on each outer fold.
netid
    Unsupervised network identification (k-means, spectral, k-NN) beside FC rows.
attention
    Attention per ROI and network, contrasted between conditions (permutation + FDR).
results
    The long result table (Parquet, one row per fold) and MLflow logging.
loop
    The loop every protocol shares: rows read back from the result table, or computed
    and appended.
seeding
    Seeded random streams of the protocols, derived one way.
health
    Training health of a pretraining run: held-out pretext task against trivial
    baselines, embedding rank and dead dimensions, a verdict per view, loss curves.
"""

from bsym._lazy import lazy_exports
from bsym.errors import BsymError


class EvaluationError(BsymError, ValueError):
    """An evaluation that cannot run as asked: the message says what was expected and
    what was received."""


_EXPORTS = {
    "Splits": "bsym.evaluate.splits",
    "PretrainSplit": "bsym.evaluate.splits",
    "make_splits": "bsym.evaluate.splits",
    "load_splits": "bsym.evaluate.splits",
    "make_pretrain_split": "bsym.evaluate.splits",
    "load_pretrain_split": "bsym.evaluate.splits",
    "EmbeddingSet": "bsym.evaluate.embeddings",
    "compute_embeddings": "bsym.evaluate.embeddings",
    "embed_checkpoint": "bsym.evaluate.embeddings",
    "feature_embeddings": "bsym.evaluate.embeddings",
    "load_embeddings": "bsym.evaluate.embeddings",
    "ProbeConfig": "bsym.evaluate.probe",
    "linear_probe": "bsym.evaluate.probe",
    "probe_fold": "bsym.evaluate.probe",
    "FineTuneConfig": "bsym.evaluate.finetune",
    "FineTuneModel": "bsym.evaluate.finetune",
    "fine_tune": "bsym.evaluate.finetune",
    "FoldTraining": "bsym.evaluate.config",
    "TrainingConfig": "bsym.evaluate.foldtrain",
    "train_supervised": "bsym.evaluate.supervised",
    "supervised_objective": "bsym.evaluate.supervised",
    "identify_networks": "bsym.evaluate.netid",
    "network_identification": "bsym.evaluate.netid",
    "attention_maps": "bsym.evaluate.attention",
    "contrast_attention": "bsym.evaluate.attention",
    "ResultTable": "bsym.evaluate.results",
    "training_health": "bsym.evaluate.health",
    "embedding_health": "bsym.evaluate.health",
    "effective_rank": "bsym.evaluate.health",
    "plot_loss_curves": "bsym.evaluate.health",
}

__all__ = ["EvaluationError", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
