#!/usr/bin/env python3
"""Helpers of scripts/device_check.sh that are easier in Python than in bash.

  merge OUT IN...             merge JSON result files into OUT: Google Benchmark's
                              (spembed_bench --benchmark_out) or the torch scripts'
                              ({"results": [...]}); a Google Benchmark file cut short
                              by a timeout is read up to its last complete entry.
                              Exit 1 when no input could be read (OUT not written).
  rest-filters LIST HEADLINE  LIST: spembed_bench --benchmark_list_tests output;
                              HEADLINE: the headline regex (on the names). Prints,
                              per group (fwd, bwd, attn), "group<TAB>count<TAB>regex":
                              a regex selecting that group's benchmarks that are not
                              headline ones, written per case (shape/ids/dtype/...),
                              short enough for the benchmark's regex engine.
  gtest-summary DIR           markdown: per GoogleTest JSON file in DIR (GTEST_OUTPUT),
                              cases passed / failed / skipped, time, the failed cases
                              and the slowest cases.
  pytest-summary XML          markdown line from pytest's --junitxml file.
  sanitizer-summary TSV       markdown table of the compute-sanitizer runs; TSV rows:
                              tool, binary, shard, exit status, wall seconds, log path.
"""

import glob
import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def load_tolerant(path):
    """A JSON file; a Google Benchmark file without its ending (the process
    was killed) is closed after its last complete benchmark entry."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError:
        pass
    if '"benchmarks": [' not in text:
        raise ValueError(f"{path}: not JSON and not a Google Benchmark file")
    head, _, body = text.partition('"benchmarks": [')
    end = body.rfind("\n    }")
    body = body[:end + len("\n    }")] if end >= 0 else ""
    data = json.loads(head + '"benchmarks": [' + body + "\n  ]\n}")
    data.setdefault("context", {})["device_check_note"] = "truncated file: read up to its last complete entry"
    return data


def cmd_merge(out, inputs):
    merged = None
    for path in inputs:
        if not os.path.isfile(path):
            continue
        try:
            data = load_tolerant(path)
        except (OSError, ValueError) as e:
            print(f"merge: skipped {path}: {e}", file=sys.stderr)
            continue
        if merged is None:
            merged = data
            continue
        for key in ("benchmarks", "results"):
            if key in data:
                merged.setdefault(key, []).extend(data[key])
    if merged is None:
        return 1
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(tmp, out)
    return 0


GROUPS = {"eb": "fwd", "eb_cpu": "fwd", "ebb": "bwd", "ebb_cpu": "bwd", "attn": "attn",
          "attn_cpu": "attn"}


def ere_escape(s):
    # Benchmark names hold letters, digits and _ . / - only.
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", s)


# Google Benchmark's suffixes of a registered name (spembed_bench sets the
# iterations and manual timing): not part of the case or the peer.
SUFFIX = re.compile(r"^(iterations|repeats|threads|min_time|min_warmup_time):|^(manual_time|real_time|process_time)$")


def cmd_rest_filters(list_path, headline):
    head = re.compile(headline)
    by_group = {}
    with open(list_path) as f:
        for line in f:
            name = line.strip()
            parts = name.split("/")
            while parts and SUFFIX.search(parts[-1]):
                parts.pop()
            if len(parts) < 3 or parts[0] not in GROUPS:
                continue
            if head.search(name):
                continue
            prefix, case = parts[0], "/".join(parts[1:-1])
            cases = by_group.setdefault(GROUPS[prefix], {}).setdefault(prefix, [])
            if case not in cases:
                cases.append(case)
            by_group[GROUPS[prefix]].setdefault("_count", []).append(name)
    for group in ("fwd", "bwd", "attn"):
        entry = by_group.get(group)
        if not entry:
            print(f"{group}\t0\t")
            continue
        count = len(entry.pop("_count"))
        alts = []
        for prefix, cases in entry.items():
            alts.append(f"^{prefix}/({'|'.join(ere_escape(c) for c in cases)})/")
        print(f"{group}\t{count}\t{'|'.join(alts)}")
    return 0


def cmd_gtest_summary(directory):
    files = sorted(glob.glob(os.path.join(directory, "*.json")))
    if not files:
        print("No GoogleTest JSON results (the binaries did not run, or crashed before writing).")
        return 0
    lines = ["| binary | cases | passed | failed | skipped | seconds |", "|---|---|---|---|---|---|"]
    failed_names, all_cases = [], []
    totals = [0, 0, 0, 0]
    for path in files:
        try:
            data = load_tolerant(path)
        except (OSError, ValueError) as e:
            lines.append(f"| {os.path.basename(path)} | unreadable: {e} | | | | |")
            continue
        n = passed = failed = skipped = 0
        for suite in data.get("testsuites", []):
            for case in suite.get("testsuite", []):
                name = f"{suite.get('name')}.{case.get('name')}"
                n += 1
                seconds = float(str(case.get("time", "0s")).rstrip("s") or 0)
                all_cases.append((seconds, name))
                if case.get("failures"):
                    failed += 1
                    failed_names.append(name)
                elif case.get("result") == "SKIPPED" or case.get("skipped"):
                    skipped += 1
                else:
                    passed += 1
        seconds = str(data.get("time", "?")).rstrip("s")
        lines.append(f"| {os.path.basename(path)[:-5]} | {n} | {passed} | {failed} | {skipped} | "
                     f"{seconds} |")
        for i, v in enumerate((n, passed, failed, skipped)):
            totals[i] += v
    lines.append(f"| all | {totals[0]} | {totals[1]} | {totals[2]} | {totals[3]} | |")
    if failed_names:
        lines.append("")
        lines.append(f"Failed cases ({len(failed_names)}; first 30): "
                     + ", ".join(f"`{n}`" for n in failed_names[:30]))
    if all_cases:
        slow = sorted(all_cases, reverse=True)[:8]
        lines.append("")
        lines.append("Slowest cases: " + ", ".join(f"`{n}` {s:.2f} s" for s, n in slow))
    print("\n".join(lines))
    return 0


def cmd_pytest_summary(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"no pytest JUnit XML ({e})")
        return 0
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failures = errors = skipped = 0
    seconds = 0.0
    failed = []
    for s in suites:
        tests += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
        seconds += float(s.get("time", 0) or 0)
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '')}.{case.get('name', '')}")
    passed = tests - failures - errors - skipped
    line = (f"pytest: {tests} cases, {passed} passed, {failures} failed, {errors} errors, "
            f"{skipped} skipped, {seconds:.1f} s")
    if failed:
        line += "; failed (first 20): " + ", ".join(f"`{n}`" for n in failed[:20])
    print(line)
    return 0


def cmd_sanitizer_summary(tsv):
    lines = ["| tool | binary | shard | status | cases OK | errors reported | seconds |",
             "|---|---|---|---|---|---|---|"]
    with open(tsv) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for tool, binary, shard, rc, seconds, log in rows:
        try:
            with open(log, errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        ok = len(re.findall(r"^\[       OK \]", text, re.M))
        summary = re.findall(r"^========= ERROR SUMMARY: (\d+) error", text, re.M)
        errors = summary[-1] if summary else "?"
        status = {"0": "clean", "99": "ERRORS", "124": "timed out", "137": "killed (time)",
                  "empty": "NO CASES (the filter matched nothing)",
                  "missing": "binary missing"}.get(rc, f"exit {rc}")
        if rc not in ("0", "99", "124", "137", "empty", "missing"):
            if "Device not supported" in text or "no CUDA-capable device" in text \
                    or "CUDA cannot be used" in text:
                status += " (no usable GPU)"
            elif "FAILED" in text:
                status += " (tests failed under the tool)"
        lines.append(f"| {tool} | {binary} | {shard} | {status} | {ok} | {errors} | {seconds} |")
    print("\n".join(lines))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "merge" and len(args) >= 2:
        return cmd_merge(args[0], args[1:])
    if cmd == "rest-filters" and len(args) == 2:
        return cmd_rest_filters(args[0], args[1])
    if cmd == "gtest-summary" and len(args) == 1:
        return cmd_gtest_summary(args[0])
    if cmd == "pytest-summary" and len(args) == 1:
        return cmd_pytest_summary(args[0])
    if cmd == "sanitizer-summary" and len(args) == 1:
        return cmd_sanitizer_summary(args[0])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
