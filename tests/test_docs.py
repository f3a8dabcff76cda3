"""README.md and docs/: the README stays short, every link and path leads to something that exists, the Files table
names every module, every command of the documents and of `make demo` is accepted by its script's own parser, and
the learning-rate schedules the README states are the ones train.py builds from its commands."""

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

import train
from tests.scripts import ROOT
from tests.test_train import learning_rates

README = Path(ROOT, "README.md")
DOCUMENTS = [README, *sorted(Path(ROOT, "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
SCRIPT_PATH = re.compile(r"[\w.-]+(/[\w.-]+)*\.(py|sbatch)")


def relative(path):
    return str(path.relative_to(ROOT))


def prose_and_blocks(document):
    """The lines outside fenced code blocks, and the blocks as (language, [lines])."""
    prose, blocks, block = [], [], None
    for line in document.read_text().splitlines():
        if line.startswith("```"):
            if block is None:
                block = (line[3:].strip(), [])
            else:
                blocks.append(block)
                block = None
        elif block is None:
            prose.append(line)
        else:
            block[1].append(line)
    assert block is None, f"{relative(document)}: a code block is not closed"
    return prose, blocks


def anchors(document):
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen, result = {}, set()
    for line in prose_and_blocks(document)[0]:
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return result


def code_spans(lines):
    return [span for line in lines for span in CODE_SPAN.findall(line)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_links_lead_to_existing_files_and_headings(document):
    broken = []
    for line in prose_and_blocks(document)[0]:
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif anchor and anchor not in anchors(linked):
                broken.append(f"{target}: no heading with the anchor #{anchor} in {relative(linked)}")
    assert not broken, f"{relative(document)}: " + "; ".join(broken)


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_named_scripts_and_modules_exist(document):
    missing = [span for span in code_spans(prose_and_blocks(document)[0]) if SCRIPT_PATH.fullmatch(span)]
    missing = [span for span in missing if not Path(ROOT, span).is_file()]
    assert not missing, f"{relative(document)} names files that do not exist: {missing}"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines: move the detail to a page of docs/"


def test_files_table_is_complete_and_exists():
    prose = prose_and_blocks(Path(ROOT, "docs", "files.md"))[0]
    named = {
        span.rstrip("/") for line in prose if line.startswith("| `") for span in code_spans([line.split(" | ")[0]])
    }
    missing = sorted(name for name in named if not Path(ROOT, name).exists())
    assert not missing, f"docs/files.md names files that do not exist: {missing}"
    modules = [
        *Path(ROOT).glob("*.py"),
        Path(ROOT, "multigrain", "__init__.py"),
        *Path(ROOT, "multigrain").glob("**/[!_]*.py"),
        *Path(ROOT, "tools").glob("[!_]*.py"),
        *Path(ROOT, "benchmarks").glob("[!_]*.py"),
    ]
    absent = sorted(relative(path) for path in modules if relative(path) not in named)
    assert not absent, f"docs/files.md has no row for {absent}"


def shell_commands(document):
    """The command lines of the shell blocks (continuations joined, comments dropped, the variables of `for VAR in
    VALUE ...` replaced by the first value) and the code spans that start with python or torchrun."""
    prose, blocks = prose_and_blocks(document)
    commands = []
    for language, lines in blocks:
        if language not in SHELL_LANGUAGES:
            continue
        variables = {}
        for line in "\n".join(lines).replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens[:1] == ["for"] and tokens[2:3] == ["in"]:
                variables[tokens[1]] = tokens[3].rstrip(";")
                continue
            for name, value in variables.items():
                tokens = [token.replace(f"${name}", value) for token in tokens]
            if tokens and tokens[0] not in ("do", "done"):
                commands.append(tokens)
    for span in code_spans(prose):
        if span.startswith(("python ", "torchrun ")):
            commands.append(shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", span)))  # [--optional flags] included
    return commands


def script_and_arguments(tokens):
    """(the script or module run by a command line, its arguments), or None for a command of no script of ours."""
    if tokens[0] in ("python", "python3") and tokens[1] == "-m":
        return tokens[2], tokens[3:]
    if tokens[0] in ("python", "python3") and tokens[1] != "-c":
        return tokens[1], tokens[2:]
    if tokens[0] == "torchrun":
        at = next(index for index, token in enumerate(tokens) if token.endswith(".py"))
        return tokens[at], tokens[at + 1 :]
    if tokens[0] == "sbatch":
        at = next(index for index, token in enumerate(tokens) if token.endswith(".sbatch"))
        return tokens[at], tokens[at + 1 :]
    return None


def exists(script):
    if script.endswith(".py"):
        return Path(ROOT, script).is_file()
    try:
        return importlib.util.find_spec(script) is not None
    except ModuleNotFoundError:
        return False


def parser_of(script):
    """The script's own get_args_parser(), from its file path or module name."""
    module = script.removesuffix(".py").replace("/", ".") if script.endswith(".py") else script
    return importlib.import_module(module).get_args_parser()


def sbatch_command(script, arguments):
    """A batch script's `python SCRIPT.py FLAGS "$@"` line, with the arguments in place of "$@"."""
    for line in Path(ROOT, script).read_text().splitlines():
        tokens = shlex.split(line, comments=True)
        if '"$@"' in line and "python" in tokens:
            at = tokens.index("python")
            return tokens[at + 1], [
                token for flag in tokens[at + 2 :] for token in (arguments if flag == "$@" else [flag])
            ]
    raise AssertionError(f"{script} runs no python script with its arguments")


def parse_error(script, arguments):
    """What the script's parser says of the arguments: None when it accepts them."""
    parser = parser_of(script)
    parser.allow_abbrev = False  # a flag renamed to a longer name must not pass as its abbreviation
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(arguments)
    except SystemExit as exit:
        if exit.code != 0:
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def script_runs(commands):
    """(script, arguments) of the commands that run a script of this repository."""
    runs = []
    for tokens in commands:
        run = script_and_arguments(tokens)
        if run is not None and run[0].endswith(".sbatch"):
            assert Path(ROOT, run[0]).is_file(), f"{run[0]} does not exist"
            run = sbatch_command(*run)
        if run is not None:
            runs.append(run)
    return runs


def written_out(runs):
    """The arguments of the first command of each script that is written out in full (no `...`)."""
    first = {}
    for script, arguments in runs:
        if "..." not in arguments:
            first.setdefault(script, arguments)
    return first


def expanded(script, arguments, *written):
    """The arguments with `...` replaced by those of the first command of the script written out in full."""
    if "..." not in arguments:
        return arguments
    first = next((commands[script] for commands in written if script in commands), None)
    assert first is not None, f"`{script} ...`: no command of {script} written out in full to stand for `...`"
    at = arguments.index("...")
    return [*arguments[:at], *first, *arguments[at + 1 :]]


def makefile_demo_commands():
    """The `demo` target's command lines, with the Makefile's variables expanded and $(BIN)/ dropped."""
    text = Path(ROOT, "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) *:?= *(.*)$", text, re.MULTILINE))
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.MULTILINE).group(1).replace("$(BIN)/", "")

    def expand(line):
        while "$(" in line:
            line = re.sub(r"\$\((\w+)\)", lambda name: variables[name.group(1)], line)
        return line

    return [shlex.split(expand(line)) for line in recipe.splitlines()]


@pytest.mark.parametrize("document", [*DOCUMENTS, Path(ROOT, "Makefile")], ids=relative)
def test_commands_parse_with_their_scripts_parsers(document):
    commands = makefile_demo_commands() if document.name == "Makefile" else shell_commands(document)
    runs = script_runs(commands)
    written = (written_out(runs), written_out(script_runs(shell_commands(README))))
    refused = []
    for script, arguments in runs:
        if not exists(script):
            refused.append(f"{script}: no such script")
            continue
        error = parse_error(script, expanded(script, arguments, *written))
        if error:
            refused.append(f"{script} {shlex.join(arguments)}\n    {error}")
    assert runs or document not in (README, Path(ROOT, "Makefile")), f"found no command in {document}"
    assert not refused, f"{relative(document)}:\n" + "\n".join(refused)


def test_the_readme_schedules_are_torchvisions_and_the_published_codes():
    """The README's first command keeps train.py's default schedule, which drops at epochs 30, 60, 90 (StepLR(30)),
    and its second drops after them, as the published code did (`epoch > drop`): 31/30/30/29 epochs."""
    train_runs = [arguments for script, arguments in script_runs(shell_commands(README)) if script == "train.py"]
    default, published = [arguments for arguments in train_runs if "..." not in arguments]
    defaults = train.get_args_parser().parse_args([])
    parsed = train.get_args_parser().parse_args(default)
    assert (parsed.lr_scheduler, parsed.lr_step_size, parsed.lr_gamma, parsed.lr_warmup_epochs) == (
        defaults.lr_scheduler,
        defaults.lr_step_size,
        defaults.lr_gamma,
        defaults.lr_warmup_epochs,
    )
    assert learning_rates(parsed) == pytest.approx([0.2 * 0.1 ** (epoch // 30) for epoch in range(120)], rel=1e-9)
    published_rates = [0.2 * 0.1 ** sum(epoch > drop for drop in (30, 60, 90)) for epoch in range(120)]
    assert learning_rates(train.get_args_parser().parse_args(published)) == pytest.approx(published_rates, rel=1e-9)
    assert [published_rates.count(0.2 * 0.1**drops) for drops in range(4)] == [31, 30, 30, 29]
