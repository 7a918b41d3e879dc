"""`make gpu-check` (`python -m bench.gpu`): the one GPU acceptance run, about 5-8 minutes.

On a machine with a CUDA GPU it runs, each part under its own time limit and recorded even
when another part fails:
1. the CUDA-marked tests (`pytest -m cuda`: masking and loss on the device, a bf16 step, an fp16
   step with the gradient scaler, resume on CUDA);
2. the train stage under torchrun with NCCL at world size 1 (the `cpu:gloo,cuda:nccl` group, the
   collectives, DDP) on the bundled sample corpus, prepared by the demo's own stages;
3. HuBERT-base (random weights, the real base architecture) in bf16 through the trainer with
   the auto batch: audio-seconds per second and MFU, with `torch.compile` off and on;
4. the DataLoader's delivery rate against what the GPU consumes (target 1.5x).

Results: bench/results/gpu.json, with the GPU's name, torch and CUDA versions, and each part's
output tail when it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: int, cwd: Path = ROOT, env: dict[str, str] | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout} s\n" + str(exc.stdout or "") + str(exc.stderr or "")
    except OSError as exc:  # e.g. no nvidia-smi on the PATH
        rc, out = 127, str(exc)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - t0, 1), "tail": out[-3000:]}


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   gpu_count=torch.cuda.device_count(), compute_capability=f"{p.major}.{p.minor}",
                   bf16=torch.cuda.is_bf16_supported(), nccl=".".join(map(str, torch.cuda.nccl.version())))
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], 30)
    env["nvidia_smi"] = smi["tail"].strip() if smi["rc"] == 0 else None
    return env


def cuda_tests(timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider"]
    res = _run(cmd, timeout)
    res["passed"] = res["rc"] == 0
    return res


def torchrun_nccl(work: Path, timeout: int, device: str = "cuda", steps: int = 60,
                  run_dir: Path | None = None) -> dict[str, Any]:
    """The demo's data stages on the CPU, then `steps` of `ups train` under torchrun, world size 1,
    NCCL (`device="cpu"`: the same with gloo, which the test suite runs; `run_dir`: a demo project
    whose data stages already ran, which `dvc repro` then finds up to date)."""
    import yaml

    from ups import demo

    run_dir = demo.prepare(work / "demo") if run_dir is None else run_dir
    env = {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(run_dir),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    data = _run([sys.executable, "-m", "dvc", "repro", "assign-labels"], timeout, cwd=run_dir, env=env)
    if data["rc"] != 0:
        return {"passed": False, "data_stages": data}
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    params["train"].update(device=device, gpus=1, num_workers=2, max_steps=steps, precision="auto")
    (work / "gpu-params.yaml").write_text(yaml.safe_dump(params))
    out = work / "nccl"
    res = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "-m", "ups", "train", "--params", str(work / "gpu-params.yaml"),
                "--audio-dir", str(run_dir / "data/audio"), "--labels-dir", str(run_dir / "data/labels"),
                "--model-dir", str(out / "model"), "--state-dir", str(out / "state"),
                "--live-dir", str(out / "live")], timeout, cwd=run_dir, env=env)
    res["data_stages_seconds"] = data["seconds"]
    report = out / "model" / "training.json"
    if res["rc"] == 0 and report.is_file():
        t = json.loads(report.read_text())
        res.update(steps=t["steps"], world_size=t["world_size"], device=t["device"], precision=t["precision"],
                   last=t["last"], epochs=t["epochs"])
        res["passed"] = t["steps"] == steps and t["world_size"] == 1 and t["device"].startswith(device)
    else:
        res["passed"] = False
    return res


def throughput(work: Path, compile_: bool, steps: int, chunks: int, timeout: int) -> dict[str, Any]:
    out = work / f"train_cuda_compile{int(compile_)}.json"
    cmd = [sys.executable, "-m", "bench.train", "--device", "cuda", "--model", "base", "--steps", str(steps),
           "--chunks", str(chunks), "--out", str(out)]
    if compile_:
        cmd.append("--compile")
    res = _run(cmd, timeout)
    if res["rc"] == 0 and out.is_file():
        res.update(json.loads(out.read_text()))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--chunks", type=int, default=1024)
    args = p.parse_args(argv)
    result: dict[str, Any] = {"environment": environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not result["environment"]["cuda_available"]:
        print("bench.gpu: no usable CUDA GPU here; nothing to check", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ups-gpu-check-") as tmp:
        work = Path(tmp)
        result["cuda_tests"] = cuda_tests(150)
        result["torchrun_nccl_world1"] = torchrun_nccl(work, 150)
        result["hubert_base_bf16"] = throughput(work, False, args.steps, args.chunks, 120)
        result["hubert_base_bf16_compiled"] = throughput(work, True, args.steps, args.chunks, 200)
    base = result["hubert_base_bf16"]
    result["summary"] = {
        "cuda_tests_passed": result["cuda_tests"]["passed"],
        "torchrun_nccl_passed": result["torchrun_nccl_world1"]["passed"],
        "audio_s_per_s": base.get("trainer_audio_s_per_s"),
        "audio_s_per_s_compiled": result["hubert_base_bf16_compiled"].get("trainer_audio_s_per_s"),
        "mfu": base.get("mfu"),
        "mfu_compiled": result["hubert_base_bf16_compiled"].get("mfu"),
        "loader_over_gpu": base.get("loader_over_gpu"),
        "targets": {"mfu": 0.35, "loader_over_gpu": 1.5},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result["summary"], indent=2, sort_keys=True))
    ok = result["summary"]["cuda_tests_passed"] and result["summary"]["torchrun_nccl_passed"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
