"""Which jobs the workflow runs on each dataset, and what each job asks the scheduler for.

:class:`JobPlan` answers the rule files' questions about a validated configuration: the
tasks of a dataset, whether it is reported, and the per-job tables merged into its result
table. Paths are those of the rule files, under the configuration's ``results`` folder.
"""

from __future__ import annotations

from bsym.workflow.sources import has_conditions, has_networks


def gpus(device):
    """GPUs a job asks the scheduler for: one where its configured device is CUDA, else none.

    ``auto`` asks for none: on a cluster it runs where it lands (set ``cuda`` for a GPU).
    """
    return 1 if str(device).startswith("cuda") else 0


def rule_name(name, index):
    """The name of a rule defined once per task group (:meth:`JobPlan.task_groups`): the
    name itself for the first group, ``<name>_<index + 1>`` for the later ones."""
    return name if index == 0 else f"{name}_{index + 1}"


class JobPlan:
    """The jobs a validated workflow configuration asks for.

    Parameters
    ----------
    config : dict
        The configuration, validated against the workflow's schema with its defaults
        filled in.
    """

    def __init__(self, config):
        self.config = config
        self.results = config["results"]
        #: Self-supervised models (pretrained, embedded, probed, scored on networks).
        self.ssl_models = list(config["models"])
        #: Supervised baselines trained from scratch on each outer fold.
        self.baselines = list(config["supervised"]["models"])
        #: Connectome baselines probed beside the embeddings (``connectome-<features>``).
        self.features = list(config["connectome_features"])
        self.seeds = list(config["splits"]["seeds"])

    def tasks_of(self, dataset):
        """Task names run on a dataset (a task without ``datasets`` runs on every one)."""
        every = list(self.config["datasets"])
        return [
            name
            for name, task in self.config["tasks"].items()
            if dataset in (every if task["datasets"] is None else task["datasets"])
        ]

    def subject_tasks(self, dataset):
        """Tasks with one value per subject (what fine-tuning and supervised training
        predict)."""
        tasks = self.config["tasks"]
        return [t for t in self.tasks_of(dataset) if tasks[t]["level"] != "scan"]

    def swept_tasks(self, baseline, dataset):
        """Tasks whose hyper-parameters a sweep chooses for a baseline (none if not
        swept)."""
        sweep = self.config["sweeps"]["models"].get(baseline)
        if sweep is None:
            return []
        tasks = self.subject_tasks(dataset)
        chosen = tasks if sweep["tasks"] is None else sweep["tasks"]
        return [t for t in tasks if t in chosen]

    def task_groups(self, subject_level=False):
        """The datasets that share one task list, with that list, in configuration order.

        A job that runs every task of a dataset declares one output per task, so its rule
        is defined once per distinct task list (see :func:`rule_name`). Datasets without
        tasks are left out.

        Parameters
        ----------
        subject_level : bool
            Group by :meth:`subject_tasks` (what supervised training predicts) instead of
            :meth:`tasks_of`.

        Returns
        -------
        list of (list of str, list of str)
            ``(datasets, tasks)`` pairs.
        """
        groups = {}
        for dataset in self.config["datasets"]:
            tasks = self.subject_tasks(dataset) if subject_level else self.tasks_of(dataset)
            if tasks:
                groups.setdefault(tuple(tasks), []).append(dataset)
        return [(datasets, list(tasks)) for tasks, datasets in groups.items()]

    def has_networks(self, dataset):
        """Whether a dataset's ROIs carry network labels (network identification)."""
        return has_networks(self.config["datasets"][dataset])

    def has_conditions(self, dataset):
        """Whether a dataset has a pre and a post session per subject to contrast."""
        return has_conditions(self.config["datasets"][dataset])

    def reported(self, dataset):
        """Whether a dataset gets a result table and report: something is probed or
        scored there."""
        return bool(self.tasks_of(dataset)) or (
            self.has_networks(dataset) and bool(self.ssl_models)
        )

    def netid_models(self, dataset):
        """Models scored on network identification on a dataset."""
        return self.ssl_models if self.has_networks(dataset) else []

    def attention_models(self, dataset):
        """Models whose attention is contrasted between a dataset's sessions."""
        return self.config["attention"]["models"] if self.has_conditions(dataset) else []

    def sweep_results(self, dataset, baseline, task, seed):
        """The per-fold best hyper-parameters a supervised job reads, if its task is
        swept."""
        if task not in self.swept_tasks(baseline, dataset):
            return []
        return [f"{self.results}/sweeps/{dataset}/{baseline}/{task}/seed{seed}.json"]

    def result_tables(self, dataset):
        """Every per-job table merged into a dataset's result table, in merge order."""
        root, seeds = self.results, self.seeds
        probed = self.ssl_models + [f"connectome-{f}" for f in self.features]
        tasks, subject_tasks = self.tasks_of(dataset), self.subject_tasks(dataset)
        trained = (
            ("supervised", self.baselines),
            ("finetune", self.config["finetune"]["models"]),
        )
        return [
            *(f"{root}/probe/{dataset}/{m}/{t}/seed{s}.parquet"
              for m in probed for t in tasks for s in seeds),
            *(f"{root}/netid/{dataset}/{m}.parquet" for m in self.netid_models(dataset)),
            *(f"{root}/{protocol}/{dataset}/{m}/{t}/seed{s}.parquet"
              for protocol, models in trained
              for m in models for t in subject_tasks for s in seeds),
        ]

    def health_tables(self, dataset):
        """Every pretraining run's health table on a dataset."""
        return [f"{self.results}/health/{dataset}/{m}.parquet" for m in self.ssl_models]

    def attention_outputs(self, dataset):
        """The attention-contrast folders of a dataset."""
        return [f"{self.results}/attention/{dataset}/{m}" for m in self.attention_models(dataset)]
