"""Every leaf of a small run's config.json replaced by each of NaN, inf, -1, 0, 1e9, "x", null and [1], then
`perceiver-med predict` in-process: prints each case that is neither exit 0 with finite probabilities nor exit 2
with one line (a traceback, or more than one line). The exhaustive twin of the Hypothesis test in
tests/run/test_trusted_config.py (which samples 25 cases per run).

    python benchmarks/config_mutations.py
"""
import contextlib, io, json, math, shutil, sys, csv, tempfile, traceback
from pathlib import Path
from perceiver_med import cli
from perceiver_med.synth.phantoms import synth
from perceiver_med.workflows.folders import split_folder
from perceiver_med.training.config import Runtime
from perceiver_med.workflows.train import TrainRequest, train
def main():

    root = Path(tempfile.mkdtemp())
    synth("knee", root / "data", 12, "png", 3)
    split_folder(root / "data", root / "splits.csv", seed=0)
    run = train(TrainRequest(root / "splits.csv", root / "run", "perceiver",
                             dict(size=32, epochs=2, batch_size=8, patience=0, num_latents=8, latent_dim=32),
                             Runtime(device="cpu"))).run
    cfg = json.loads((run / "config.json").read_text())
    def leaves(d, p=()):
        if isinstance(d, dict):
            for k, v in d.items(): yield from leaves(v, (*p, k))
        elif isinstance(d, list) and d:
            for k, v in enumerate(d): yield from leaves(v, (*p, k))
        else: yield p
    REPL = [float("nan"), float("inf"), -1, 0, 1e9, "x", None, [1]]
    bad = cases = 0
    for leaf in leaves(cfg):
        for value in REPL:
            cases += 1
            c = json.loads(json.dumps(cfg))
            node = c
            for k in leaf[:-1]: node = node[k]
            node[leaf[-1]] = value
            copy = root / "copy"; shutil.rmtree(copy, ignore_errors=True); shutil.copytree(run, copy)
            (copy / "config.json").write_text(json.dumps(c))
            out = root / "p.csv"; out.unlink(missing_ok=True)
            sys.argv = ["perceiver-med", "predict", str(copy), str(root / "data"), "--out", str(out), "--device", "cpu"]
            err = io.StringIO(); code = 0
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    cli.main()
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    code = "exc"; err.write(traceback.format_exc())
            e = err.getvalue()
            ok = code == 2 and len([l for l in e.splitlines() if l.strip()]) == 1 and "Traceback" not in e
            if code == 0:
                rows = list(csv.DictReader(open(out)))
                probs = [float(r[k]) for r in rows for k in r if k.startswith("prob_")]
                ok = bool(rows) and all(math.isfinite(p) and 0 <= p <= 1 for p in probs)
            if not ok:
                bad += 1
                print("BAD", leaf, repr(value), code, e.strip()[-300:].replace("\n", " | "), flush=True)
    print(f"done: {cases} cases, {bad} bad")

if __name__ == '__main__':
    main()
