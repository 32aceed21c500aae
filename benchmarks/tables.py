"""What the `*_effect.py` benchmarks share: "mean ± std" cells and a markdown table."""

import statistics


def mean_std(values) -> str:
    """"mean ± std" (sample std), or the value alone when there is one."""
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A markdown table, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print("| " + " | ".join(f"{cell:<{width}}" for cell, width in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print("| " + " | ".join(f"{cell:<{width}}" for cell, width in zip(row, widths)) + " |")


def write_result(results_dir, name: str, result: dict, markdown: str, plot) -> None:
    """RESULTS_DIR/NAME.json (`result`), .md (`markdown`) and .png (`plot(result, path)`); prints the Markdown."""
    import json
    from pathlib import Path

    results_dir = Path(results_dir)
    (results_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    (results_dir / f"{name}.md").write_text(markdown)
    plot(result, results_dir / f"{name}.png")
    print(markdown)
