"""Turn workload results into the generated part of docs/benchmarks.md.

The page keeps everything outside the markers ``<!-- bench:start -->`` and
``<!-- bench:end -->`` as written by hand (the analysis), and replaces what is between
them. A page without markers gets them appended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

ORDER = ("W1", "W2", "W3", "W4", "W5", "W6")


def spread(value: dict[str, float], digits: int = 2) -> str:
    """Format a median with its range, e.g. ``5.50 (5.20–7.61)``; one run shows no range."""
    median = f"{value['median']:,.{digits}f}"
    low, high = f"{value['low']:,.{digits}f}", f"{value['high']:,.{digits}f}"
    if low == high:
        return median
    return f"{median} ({low}–{high})"


def met_text(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "reported"}[met]


def render(results: dict[str, Any]) -> str:
    """Return the generated Markdown for every workload in ``results``."""
    workloads = [results["workloads"][name] for name in ORDER if name in results["workloads"]]
    lines = [START, ""]
    lines += _machine(results)
    lines += ["## Targets", "", "| target | expected | measured | result |", "|---|---|---|---|"]
    for workload in workloads:
        for item in workload["targets"]:
            lines.append(
                f"| {item['target']} | {item['expected']} | {item['measured']} | {met_text(item['met'])} |"
            )
    lines.append("")
    for workload in workloads:
        lines += _workload(workload)
    if "peers" in results:
        lines += _peers(results)
    lines += [END]
    return "\n".join(lines) + "\n"


def _machine(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    return [
        "## Machine",
        "",
        f"- {machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB memory, "
        f"{machine['os']}, Python {machine['python']}",
        f"- {versions}",
        "- Each workload below names the date and tm-export commit it was measured at.",
        "",
    ]


def _workload(workload: dict[str, Any]) -> list[str]:
    parameters = ", ".join(f"{name} {value}" for name, value in workload["parameters"].items())
    lines = [
        f"## {workload['name']}: {workload['title']}",
        "",
        f"Measured {workload['measured_at']} at commit {workload['commit']}"
        f"{' (quick mode)' if workload.get('quick') else ''}; {parameters}.",
        "",
    ]
    lines += _table(workload["rows"])
    if workload.get("facts"):
        lines += [""] + [f"- {fact}" for fact in workload["facts"]]
    if workload["notes"]:
        lines += [""] + [f"- {note}" for note in workload["notes"]]
    lines += ["", "Commands:", "", "```sh"] + workload["commands"] + ["```", ""]
    if workload.get("recipe"):
        lines += ["Recipe:", "", "```yaml", workload["recipe"].rstrip("\n"), "```", ""]
    return lines


#: Columns that only some workloads have: result key, header, digits.
OPTIONAL_COLUMNS = (
    ("first_export_s", "first export request s", 2),
    ("max_sliding", "most requests in 1 s", 0),
    ("mean_rate", "mean requests/s", 2),
)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    with_ideal = any("ideal_s" in entry for entry in rows)
    optional = [column for column in OPTIONAL_COLUMNS if any(column[0] in e for e in rows)]
    header = "| subject | c | wall s | records | records/s | client CPU s | peak RSS MB |"
    rule = "|---|---|---|---|---|---|---|"
    if with_ideal:
        header += " wall ÷ ideal |"
        rule += "---|"
    for _, title, _ in optional:
        header += f" {title} |"
        rule += "---|"
    header += " requests | server CPU | other load |"
    rule += "---|---|---|"
    lines = [header, rule]
    for entry in rows:
        wall = entry["wall_s"]["median"]
        server = entry.get("server_cpu_s")
        server_text = f"{server['median'] / wall:.0%}" if server else "–"
        other = f"{entry['other_cpu_s']['median'] / wall:.1f} cores"
        complete = "" if entry.get("complete", True) else " ⚠"
        cells = [
            entry["label"],
            str(entry.get("concurrency", "–")),
            spread(entry["wall_s"]),
            f"{entry['records']:,}{complete}" if entry["records"] else "–",
            spread(entry["records_per_s"], 0) if entry["records"] else "–",
            spread(entry["cpu_s"]),
            spread(entry["peak_rss_mb"], 0),
        ]
        if with_ideal:
            cells.append(f"{entry['wall_over_ideal']:.2f}" if "wall_over_ideal" in entry else "–")
        for key, _, digits in optional:
            cells.append(spread(entry[key], digits) if key in entry else "–")
        cells += [f"{entry.get('requests', '–'):,}" if "requests" in entry else "–"]
        cells += [server_text, other]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _peers(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Peers",
        "",
        "Records each tool delivered per stream (projects / details / contributions / "
        "activities), next to tm-export's in the same workload.",
        "",
        "| peer | installed | W1 records | W2 records | note |",
        "|---|---|---|---|---|",
    ]
    workloads = results["workloads"]

    def delivered(workload: str, label: str) -> str:
        rows = workloads.get(workload, {}).get("rows", [])
        found = [entry for entry in rows if entry["label"].startswith(label)]
        if not found:
            return "–"
        counts = " / ".join(f"{n:,}" for n in found[0]["records_by_stream"].values())
        return counts + ("" if found[0].get("complete") else " ⚠")

    lines.append(
        f"| tm-export (for comparison) | yes | {delivered('W1', 'tm-export')} "
        f"| {delivered('W2', 'tm-export')} | |"
    )
    for name, peer in results["peers"].items():
        lines.append(
            f"| {name} {peer.get('version') or ''} | {'yes' if peer['installed'] else 'no'} "
            f"| {delivered('W1', name)} | {delivered('W2', name)} | {peer.get('note', '')} |"
        )
    lines.append("")
    return lines


def write_page(page: Path, generated: str, template: str) -> None:
    """Replace the generated block of ``page``, or create the page from ``template``."""
    if not page.exists():
        page.write_text(template.replace(START + "\n" + END + "\n", generated))
        return
    text = page.read_text()
    if START in text and END in text:
        before = text.split(START, 1)[0]
        after = text.split(END, 1)[1]
        page.write_text(before + generated.rstrip("\n") + after)
    else:
        page.write_text(text.rstrip("\n") + "\n\n" + generated)
