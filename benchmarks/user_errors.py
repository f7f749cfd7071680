"""The user mistakes of issue 14, each run as a user would, with what happens: exit status, the
first line of stderr, and what was written to ``--output-dir``.

    python benchmarks/user_errors.py                     # this checkout
    python benchmarks/user_errors.py --tree OLD_CHECKOUT # another checkout of the project (before/after)

The promise (README, "When a run goes wrong"): a user mistake is one ``error:`` line and exit
status 2, before anything is written. Prints a Markdown table. Each case runs in a fresh
temporary directory; the recipes and package come from ``--tree``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLS, TAG = "recipes/text_classification.py", "recipes/tagging.py"
SMALL = ["--epochs", "1", "--max-steps", "2", "--no-progress", "--device", "cpu"]


def _data(work: Path, tree: Path) -> dict[str, Path]:
    """Small classification and tagging files, written with the checkout's generators."""
    code = ("import sys, json; from seqbucket_plugin.training import write_classification_data, write_tagging_data;"
            "c = write_classification_data(sys.argv[1] + '/cls', seed=0, n_train=200);"
            "t = write_tagging_data(sys.argv[1] + '/tag', seed=0);"
            "print(json.dumps({'cls': str(c['train']), 'cls_test': str(c['test']), 'tag': str(t['train'])}))")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(work)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(tree)}).stdout
    except subprocess.CalledProcessError:  # an older generator without n_train
        out = subprocess.run([sys.executable, "-c", code.replace(", n_train=200", ""), str(work)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(tree)}).stdout
    paths = {k: Path(v) for k, v in json.loads(out).items()}
    (work / "empty.jsonl").write_text("")
    (work / "header.csv").write_text("text,label\n")
    conllu = work / "tiny.conllu"
    conllu.write_text("1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_\n2\tthere\tthere\tADV\tRB\t_\t1\tadvmod\t_\t_\n\n" * 20)
    short = work / "short.conll"  # token POS TAG lines; one without its TAG (its POS would be read as the tag)
    lines = [f"{line.split()[0]} X {line.split()[1]}" if line.strip() else ""
             for line in paths["tag"].read_text().splitlines()]
    lines[3] = " ".join(lines[3].split()[:2])
    short.write_text("\n".join(lines) + "\n")
    one = work / "one.conllu"
    one.write_text("1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_\n\n")
    (work / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (work / "a_dir").mkdir()
    (work / "a_file").write_text("x")
    return {**paths, "empty": work / "empty.jsonl", "header": work / "header.csv", "conllu": conllu,
            "short": short, "one": one, "latin1": work / "latin1.txt", "dir": work / "a_dir", "file": work / "a_file"}


def cases(d: dict[str, Path]) -> list[tuple[str, str, list[str], Path | None]]:
    """(what, recipe, arguments, stdin file)."""
    cls = ["--train-file", str(d["cls"]), "--test-file", str(d["cls_test"]), *SMALL]
    tag = ["--train-file", str(d["tag"]), *SMALL]
    return [
        ("--max-tokens 0", CLS, [*cls, "--max-tokens", "0"], None),
        ("--max-tokens -5", CLS, [*cls, "--max-tokens", "-5"], None),
        ("--max-length -3", CLS, [*cls, "--max-length", "-3"], None),
        ("--num-buckets 0", CLS, [*cls, "--num-buckets", "0"], None),
        ("--head-fraction 5", CLS, [*cls, "--head-fraction", "5"], None),
        ("--config with some keys", CLS, [*cls, "--config", "{partial}"], None),
        ("--config with epochs: 1.5", CLS, [*cls, "--config", "{float_epochs}"], None),
        ("--output-dir is a file", CLS, [*cls, "--output-dir", str(d["file"])], None),
        ("--predictions is a directory", CLS, ["--predict", "-", "--predictions", str(d["dir"])], "{texts}"),
        ("--predict - with non-UTF-8 stdin", CLS, ["--predict", "-"], str(d["latin1"])),
        ("--batch-size 8 --max-tokens 512", CLS, [*cls, "--batch-size", "8", "--max-tokens", "512"], None),
        ("--epochs 0", CLS, [*cls, "--epochs", "0"], None),
        ("--tag-column xpos on a column file", TAG, [*tag, "--tag-column", "xpos"], None),
        ("--tag-column 3 on a .conllu", TAG, ["--train-file", str(d["conllu"]), *SMALL, "--tag-column", "3"], None),
        ("a column-file line without its tag", TAG, ["--train-file", str(d["short"]), *SMALL], None),
        ("a one-sentence training file, no dev file", TAG, ["--train-file", str(d["one"]), *SMALL], None),
        ("an empty training file", CLS, ["--train-file", str(d["empty"]), *SMALL], None),
        ("a header-only training file", CLS, ["--train-file", str(d["header"]), *SMALL], None),
    ]


def run_case(tree: Path, recipe: str, args: list[str], stdin: Path | None, work: Path, n: int) -> dict:
    out = work / ("trained" if "--predict" in args else f"run{n}")  # --predict: the run trained first
    if "--output-dir" not in args:
        args = [*args, "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
        proc = subprocess.run([sys.executable, str(tree / recipe), *args], stdin=source, capture_output=True,
                              env=env, timeout=600)
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() and out.name != "trained" else []
    first_error = next((line for line in err if line.startswith("error:")), err[-1] if err else "")
    return {"rc": proc.returncode, "stderr": first_error[:160], "lines": len(err), "written": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(ROOT), help="a checkout of the project (default: this one)")
    args = parser.parse_args()
    tree = Path(args.tree).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        d = _data(work, tree)
        partial = work / "partial.json"
        partial.write_text(json.dumps({"hidden_size": 16}))
        float_epochs = work / "float_epochs.json"
        shipped = tree / "recipes" / "configs" / "text_classification.json"  # older checkouts: configs set all
        base = json.loads(shipped.read_text()) if shipped.is_file() else {}
        float_epochs.write_text(json.dumps({**base, "epochs": 1.5}))
        texts = work / "texts.txt"
        texts.write_text("a fine film\n")
        subprocess.run([sys.executable, str(tree / CLS), "--train-file", str(d["cls"]), *SMALL, "--output-dir",
                        str(work / "trained")], capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)},
                       check=True)
        print("| case | exit | stderr (first `error:` line, else the last line) | stderr lines | written to --output-dir |")
        print("|---|---|---|---|---|")
        for n, (what, recipe, case_args, stdin) in enumerate(cases(d)):
            case_args = [a.format(partial=partial, float_epochs=float_epochs) for a in case_args]
            source = Path(stdin.format(texts=texts)) if stdin else None
            r = run_case(tree, recipe, case_args, source, work, n)
            written = ", ".join(r["written"]) or "nothing"
            print(f"| {what} | {r['rc']} | `{r['stderr'].replace('|', '/')}` | {r['lines']} | {written} |", flush=True)


if __name__ == "__main__":
    main()
