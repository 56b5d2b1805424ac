"""The table at the end of scripts/gpu_check.sh: one row per step from its <step>.json (status,
seconds, budget) and, for pytest steps, the counts from its JUnit XML. Also writes summary.json.

    python scripts/gpu_check_report.py OUT_DIR
"""
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET


def junit_counts(path):
    """(passed, failed, errors, skipped) of a pytest JUnit XML file, or None if it is unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return passed, total["failures"], total["errors"], total["skipped"]


def main(out_dir):
    steps = []
    for path in glob.glob(os.path.join(out_dir, "*.json")):
        try:
            with open(path) as f:
                step = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(step, dict) or "step" not in step:
            continue                               # bench_cuda.json, summary.json
        step["_mtime"] = os.path.getmtime(path)
        if step.get("junit"):
            counts = junit_counts(os.path.join(out_dir, step["junit"]))
            if counts:
                step["passed"], step["failed"], step["errors"], step["skipped"] = counts
        steps.append(step)
    steps.sort(key=lambda s: s.pop("_mtime"))
    print(f"{'step':<11} {'status':<8} {'seconds':>7} {'budget':>6}  tests (passed/failed/errors/skipped)")
    for s in steps:
        tests = "/".join(str(s[k]) for k in ("passed", "failed", "errors", "skipped")) if "passed" in s else ""
        print(f"{s['step']:<11} {s['status']:<8} {s['seconds']:>7} {s['budget_s']:>6}  {tests}")
    total, budget = sum(s["seconds"] for s in steps), sum(s["budget_s"] for s in steps)
    print(f"{'total':<11} {'ok' if all(s['status'] == 'ok' for s in steps) else 'FAILED':<8} {total:>7} {budget:>6}")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"steps": steps, "seconds": total, "budget_s": budget}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out"))
