"""The documentation stays true to the code.

Checked in README.md, CHANGELOG.md, results/README.md and docs/*.md:

- every ``bsym`` command in a shell block parses with bsym's own parser (parsed, never
  run); a ``bsym`` command quoted in running text may be a fragment, so its subcommands
  must exist and each option must be one that command takes;
- every ``snakemake`` command in a shell block parses with Snakemake's parser, and every
  option quoted in running text is one Snakemake accepts;
- every repository path the docs name exists, and every ``bsym.`` name they cite imports;
- every relative link resolves, down to the heading it points at;
- docs/config.md is what ``python -m bsym.configdoc`` writes, and every configuration key
  has a description;
- the README keeps the two commands that set up a fresh machine (CI runs the second).

Placeholders (``STORE``, ``RUN``, ``N``, ...) stand for sample values; ``a|b`` in a
command word means either, and ``[...]`` marks an optional part.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import itertools
import re
import shlex
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest

from bsym.cli import build_parser
from bsym.configdoc import OUTPUT, config_keys, load_schema, render, undocumented

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "results" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(p.relative_to(ROOT)) for p in DOCS]
README_COMMANDS = (
    "bash scripts/setup.sh && . .venv/bin/activate && snakemake --cores 2",
    "bash scripts/setup.sh && .venv/bin/python -m pytest",
)
#: Sample values of the placeholders whose option takes a number.
PLACEHOLDERS = {"N": "1000", "F": "1e15", "S": "0", "P": "20", "K": "5", "R": "100",
                "T": "200"}
#: Words of a shell line that separate one command from the next.
SEPARATORS = {"&&", "||", ";", "|"}
#: Top-level entries of the repository that the docs may name as paths.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:bsym|workflow|tests|benchmarks|scripts|docs|\.ci)/[\w./-]*"
    r"|Snakefile|environment\.yml|pyproject\.toml|LICENSE|CHANGELOG\.md)")
#: ``bsym.``-prefixed words that are metadata keys, not Python names.
METADATA_KEYS = {"bsym.artifact", "bsym.kind"}
FENCE = re.compile(r"^\s*```(\w*)\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


# -- reading Markdown ----------------------------------------------------------------------
@functools.cache
def parts(path):
    """``(fenced blocks as (language, text), the text outside them)`` of a Markdown file."""
    blocks, prose, current = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line)
        if fence and current is None:
            current = (fence.group(1), [])
        elif fence and line.strip() == "```":
            blocks.append((current[0], "\n".join(current[1])))
            current = None
        elif current is not None:
            current[1].append(line)
        else:
            prose.append(line)
    assert current is None, f"{path.name}: a code block is never closed"
    return blocks, "\n".join(prose)


def inline_code(path):
    """Code spans of the running text, whitespace collapsed."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", parts(path)[1])]


def shell_lines(path):
    """Logical lines of the shell blocks (continuations joined, comments kept)."""
    lines = []
    for language, text in parts(path)[0]:
        if language in ("bash", "sh", "shell"):
            lines += [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def commands(line, program):
    """Argument lists of each ``program`` command of one shell line (also run as
    ``python -m program``, or after ``VAR=value`` settings)."""
    found, current, redirected = [], [], False
    for word in [*shlex.split(line, comments=True), "&&"]:
        if word in SEPARATORS:
            while current and re.fullmatch(r"[A-Z_]+=\S*", current[0]):
                current = current[1:]
            if current[1:3] == ["-m", program] and current[0].endswith("python"):
                current = current[2:]
            if current[:1] == [program]:
                found.append(current[1:])
            current, redirected = [], False
        elif redirected or re.match(r"\d?>", word):
            redirected = True  # a redirection and its target end the command's words
        else:
            current.append(word)
    return found


def quoted_commands(path, program):
    """Commands of ``program`` quoted in running text (possibly fragments)."""
    spans = [s for s in inline_code(path) if s.split()[:1] == [program]]
    return [args for span in spans for args in commands(span, program)]


def alternatives(args):
    """Every command that ``a|b`` words, ``[...]`` options and placeholders stand for."""
    words = [w.strip("[]") for w in args if w not in ("...", "[", "]")]
    words = [PLACEHOLDERS.get(w, w) for w in words if w]
    choices = [w.split("|") if re.fullmatch(r"[\w+-]+(\|[\w+-]+)+", w) else [w] for w in words]
    return [list(c) for c in itertools.product(*choices)]


def documented(program):
    """``(doc, full commands, quoted fragments)`` for every doc."""
    for path in DOCS:
        full = [a for line in shell_lines(path) for c in commands(line, program)
                for a in alternatives(c)]
        quoted = [a for c in quoted_commands(path, program) for a in alternatives(c)]
        yield path, full, quoted


def parse_error(parser, argv):
    """The parser's error message for ``argv``, or None when it parses."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as stop:
        return err.getvalue().strip().splitlines()[-1] if stop.code else None
    return None


def subparser_choices(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return None


def fragment_problems(parser, argv):
    """What does not exist in a quoted fragment: a subcommand or an option."""
    while (choices := subparser_choices(parser)) is not None and argv[:1] \
            and not argv[0].startswith("-"):
        if argv[0] not in choices:
            return [f"no subcommand {argv[0]!r} (known: {', '.join(choices)})"]
        parser, argv = choices[argv[0]], argv[1:]
    options = [w.split("=")[0] for w in argv if re.match(r"--?[A-Za-z]", w)]
    return [f"unknown option {o}" for o in options if o not in parser._option_string_actions]


@functools.cache
def snakemake_parser():
    from snakemake.cli import get_argument_parser

    return get_argument_parser()


# -- the README ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_keeps_the_fresh_machine_commands(command):
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_docs_page_is_listed_in_the_index():
    listed = set(LINK.findall((ROOT / "docs" / "README.md").read_text(encoding="utf-8")))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= listed, f"docs/README.md lacks {sorted(pages - listed)}"


# -- commands ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_bsym_commands_parse(path):
    parser = build_parser()
    _, full, quoted = next(d for d in documented("bsym") if d[0] == path)
    problems = [f"bsym {' '.join(a)}: {parse_error(parser, a)}" for a in full
                if parse_error(parser, a)]
    problems += [f"`bsym {' '.join(a)}`: {p}" for a in quoted
                 for p in fragment_problems(parser, a)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_snakemake_commands_parse(path):
    _, full, quoted = next(d for d in documented("snakemake") if d[0] == path)
    if not full and not quoted:
        return
    parser = snakemake_parser()
    problems = [f"snakemake {' '.join(a)}: {parse_error(parser, a)}" for a in full
                if parse_error(parser, a)]
    problems += [f"`snakemake {' '.join(a)}`: {p}" for a in quoted
                 for p in fragment_problems(parser, a)]
    assert not problems, "\n".join(problems)


def test_the_command_checks_catch_mistakes():
    parser = build_parser()
    assert parse_error(parser, ["data", "info"]) is not None
    assert parse_error(parser, ["data", "info", "STORE"]) is None
    assert fragment_problems(parser, ["pretrain", "--resume"]) == []
    assert fragment_problems(parser, ["pretrain", "--no-such-option"])
    assert fragment_problems(parser, ["data", "no-such-command"])
    assert commands("bsym a && snakemake --cores 2 > log 2>&1", "snakemake") == [["--cores", "2"]]
    assert commands("OMP_NUM_THREADS=1 python -m bsym models list", "bsym") == [["models", "list"]]
    assert alternatives(["data", "import", "abide|adhd", "--subjects", "N"]) == [
        ["data", "import", "abide", "--subjects", "1000"],
        ["data", "import", "adhd", "--subjects", "1000"]]


def test_the_name_and_link_checks_catch_mistakes():
    assert resolves("bsym.models.build") and resolves("bsym.evaluate.loop")
    assert not resolves("bsym.models.no_such_name") and not resolves("bsym.no_such_module")
    assert slug("`connectome_features`") == "connectome_features"
    assert slug("3. Nothing ambiguous is guessed") == "3-nothing-ambiguous-is-guessed"
    assert "adding-a-model" in anchors(ROOT / "docs" / "design.md")


# -- names and paths -------------------------------------------------------------------------
def cited_paths(path):
    """Repository paths named in code (placeholders and globs left out)."""
    texts = inline_code(path) + [text for _, text in parts(path)[0]]
    found = set()
    for text in texts:
        for match in REPO_PATH.finditer(text):
            if text[match.end():match.end() + 1] in ("<", "{", "*", "["):
                continue
            found.add(match.group(1).rstrip(".:,"))
    return sorted(found)


def resolves(name):
    """Whether a dotted ``bsym.`` name is a module or an attribute of one."""
    parts_ = name.split(".")
    for cut in range(len(parts_), 0, -1):
        try:
            target = importlib.import_module(".".join(parts_[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attribute in parts_[cut:]:
                target = getattr(target, attribute)
        except AttributeError:
            return False
        return True
    return False


def cited_names(path):
    """``bsym.`` names cited in running text and imported in Python blocks."""
    names = {m.group(1) for span in inline_code(path)
             if (m := re.match(r"(bsym(?:\.\w+)+)", span))}
    for language, text in parts(path)[0]:
        if language == "python":
            for module, imported in re.findall(r"^\s*from (bsym[\w.]*) import ([\w, ]+)", text,
                                               flags=re.M):
                names |= {f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()}
    return sorted(names - METADATA_KEYS)


@pytest.mark.parametrize("path", [p for p in DOCS if p.parent.name != "results"],
                         ids=[i for i in IDS if not i.startswith("results")])
def test_cited_paths_exist(path):
    # results/README.md is left out: the paths it names are outputs, not in a checkout
    missing = [p for p in cited_paths(path) if not (ROOT / p).exists()]
    assert not missing, f"{path.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_cited_names_import(path):
    missing = [n for n in cited_names(path) if not resolves(n)]
    assert not missing, f"{path.name} cites names that do not exist: {missing}"


# -- links ---------------------------------------------------------------------------------
def slug(heading):
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path):
    seen, found = {}, set()
    for line in parts(path)[1].splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_relative_links_resolve(path):
    problems = []
    for target in LINK.findall(parts(path)[1]):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or ROOT not in resolved.parents:
            problems.append(f"{target}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not problems, "\n".join(problems)


# -- the configuration reference -----------------------------------------------------------
def test_config_reference_is_generated_from_the_schema():
    assert OUTPUT.read_text(encoding="utf-8") == render(load_schema()), (
        "docs/config.md is out of date with workflow/schemas/config.schema.yaml. "
        "Fix: python -m bsym.configdoc")


def test_every_config_key_has_a_description():
    assert undocumented(load_schema()) == []


def test_config_reference_lists_every_key_with_its_default():
    text = OUTPUT.read_text(encoding="utf-8")
    keys = config_keys(load_schema())
    assert len(keys) > 100
    for key in keys:
        assert f"| `{key.name}` |" in text or f"## `{key.name}`" in text
    pretrain_steps = next(k for k in keys if k.name == "pretrain.steps")
    assert (pretrain_steps.type, pretrain_steps.default) == ("integer ≥ 1", "1000")
    seeds = next(k for k in keys if k.name == "splits.seeds")
    assert seeds.type == "list of (integer ≥ 0), at least 1 item"
    fraction = next(k for k in keys if k.name == "datasets.<dataset>.pretrain_fraction")
    assert fraction.type == "number > 0 and < 1, or null"
    source = next(k for k in keys if k.name == "datasets.<dataset>.source")
    assert source.required and source.default is None


# -- the model example of design.md ---------------------------------------------------------
def test_the_design_model_example_trains(tmp_path):
    """The example model builds from the registry, trains through ``bsym.train.pretrain``
    on a toy store and gives embeddings and pretext predictions (in a fresh process, so
    the registry of the other tests is left as it is)."""
    blocks = [text for language, text in parts(ROOT / "docs" / "design.md")[0]
              if language == "python" and "(BrainModel)" in text]
    assert len(blocks) == 1, "docs/design.md should hold one example model"
    check = textwrap.dedent(f"""
        import torch
        from bsym.models import build, register
        from bsym.testing import toy_batch, write_toy_store
        from bsym.train import TrainConfig, pretrain

        register(SPEC)
        model = build(SPEC.name)
        batch = toy_batch(4, 16, 32)
        loss = model.pretrain_loss(batch, generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss)
        embedded = model.embed(batch)
        assert embedded.subject.shape == (4, 32) and embedded.roi.shape == (4, 16, 32)
        (prediction,) = model.pretext_predictions(
            batch, generator=torch.Generator().manual_seed(0))["default"]
        assert prediction.target.shape == prediction.prediction.shape
        store = write_toy_store({str(tmp_path / "store")!r}, n_subjects=4, n_rois=12,
                                n_timepoints=64)
        result = pretrain(SPEC.name, store.path, {str(tmp_path / "run")!r},
                          config=TrainConfig(steps=3, batch_size=4, warmup_steps=0,
                                             progress=False))
        print("trained", result.steps)
    """)
    done = subprocess.run([sys.executable, "-c", blocks[0] + "\n" + check], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "final.pt").is_file()
