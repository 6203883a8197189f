"""Joins `ssl-engine bench kernels` output with benches/pytorch_kernels.py output (same names,
same work counts) into one Markdown table: each kernel's rate, ours and PyTorch's, and the ratio.

    python3 benches/compare_kernels.py OURS.log TORCH.log [--title T]

Either log may hold other lines (the gpu_run.sh headers); only `<name>  <ms> ms  <rate> <unit>`
lines are read. Ratio > 1 means ours is faster.
"""
import argparse
import re

LINE = re.compile(r"^(?P<name>\S.*?)\s+(?P<ms>[0-9.]+) ms\s+(?P<rate>[0-9.]+) (?P<unit>TFLOP/s|GFLOP/s|GB/s|img/s)\s*$")


def read(path):
    rows = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if m:
                rate, unit = float(m["rate"]), m["unit"]
                if unit == "TFLOP/s":  # PyTorch's twin prints TFLOP/s, ours GFLOP/s
                    rate, unit = rate * 1e3, "GFLOP/s"
                rows[m["name"].strip()] = (float(m["ms"]), rate, unit)
    return rows


def fmt_rate(rate, unit):
    if unit == "GFLOP/s":
        return f"{rate / 1e3:.1f} TFLOP/s"
    return f"{rate:.0f} {unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--title", default="kernel")
    a = ap.parse_args()
    ours, torch = read(a.ours), read(a.torch)
    print(f"| {a.title} | ours ms | ours | PyTorch ms | PyTorch | ours / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (ms, rate, unit) in ours.items():
        if name not in torch:
            print(f"| {name} | {ms:.3f} | {fmt_rate(rate, unit)} | | | |")
            continue
        tms, trate, tunit = torch[name]
        print(f"| {name} | {ms:.3f} | {fmt_rate(rate, unit)} | {tms:.3f} | {fmt_rate(trate, tunit)} | {tms / ms:.2f} |")


if __name__ == "__main__":
    main()
