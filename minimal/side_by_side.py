"""Writes docs/side_by_side.html: the four minimal scripts in aligned columns, one static file.

    python minimal/side_by_side.py                 # rewrites docs/side_by_side.html
    python minimal/side_by_side.py --out page.html

Each framework's column is aligned on the plain PyTorch one with difflib: a line the framework
changes or adds is highlighted, a plain line it no longer needs is hatched. The concept rows
(create, prepare, ...) are found by the anchors in CONCEPTS below; a missing anchor is an error,
so a script cannot drift away from the page unnoticed. The output depends on the scripts alone
(no dates, no paths): regenerating an unchanged page gives the same bytes.
"""

from __future__ import annotations

import argparse
import difflib
import html
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "side_by_side.html"
SCRIPTS = {  # column: (title, file); the first column is what the others are compared with
    "plain": ("plain PyTorch", "simple_train.py"),
    "fabric": ("Lightning Fabric", "fabric_train.py"),
    "accelerate": ("Hugging Face Accelerate", "accelerate_train.py"),
    "trainer": ("Lightning Trainer", "lightning_train.py"),
}
MIN_SIMILARITY = 0.4  # two lines of a changed block sit side by side when this alike
BLANK_SIMILARITY = MIN_SIMILARITY  # blank beside blank, before any weaker pair
# (English, 中文, {column: the text of the concept's line, its first occurrence}).
CONCEPTS = [
    ("create", "创建", {
        "plain": "torch.distributed.init_process_group(", "fabric": "fabric = L.Fabric(",
        "accelerate": "accelerator = Accelerator(", "trainer": "trainer = L.Trainer(",
    }),
    ("prepare / setup", "准备 / 封装", {
        "plain": "DistributedDataParallel(model)", "fabric": "fabric.setup(model, optimizer)",
        "accelerate": "accelerator.prepare(", "trainer": "trainer.fit(",
    }),
    ("device placement", "设备放置", {
        "plain": "x, y = x.to(device), y.to(device)", "fabric": "fabric.setup_dataloaders(",
        "accelerate": "accelerator.prepare(", "trainer": "x, y = batch  #",
    }),
    ("backward", "反向传播", {
        "plain": "loss.backward()", "fabric": "fabric.backward(loss)",
        "accelerate": "accelerator.backward(loss)", "trainer": "return F.cross_entropy(",
    }),
    ("optimizer step", "优化器更新", {
        "plain": "optimizer.step()", "fabric": "optimizer.step()",
        "accelerate": "optimizer.step()", "trainer": "def configure_optimizers(",
    }),
    ("main-process print", "仅主进程打印", {
        "plain": "if rank == 0:", "fabric": "fabric.print(",
        "accelerate": "accelerator.print(", "trainer": "self.print(",
    }),
    ("save the weights", "保存权重", {
        "plain": "torch.save(", "fabric": "fabric.save(",
        "accelerate": "accelerator.save(", "trainer": "torch.save(",
    }),
    ("launch processes", "启动多进程", {
        "plain": "torchrun --nproc_per_node", "fabric": "fabric.launch()",
        "accelerate": "accelerate launch", "trainer": "devices=args.devices,",
    }),
]  # fmt: skip


@dataclass
class Cell:
    number: int | None  # 1-based line number in its script; None for an empty cell
    text: str = ""
    state: str = "blank"  # same | changed | removed (a plain line this one lacks) | blank


def read_scripts(folder: Path) -> dict[str, list[str]]:
    return {key: (folder / file).read_text().splitlines() for key, (_, file) in SCRIPTS.items()}


def align(base: list[str], other: list[str]) -> tuple[list[Cell | None], list[list[Cell]]]:
    """For each base line the other's line beside it, and the other's lines added before each."""
    beside: list[Cell | None] = [None] * len(base)
    added: list[list[Cell]] = [[] for _ in range(len(base) + 1)]
    # Blank lines are no anchors: two blocks must not be aligned on the blank line between them.
    matcher = difflib.SequenceMatcher(lambda line: not line.strip(), base, other, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                beside[i1 + k] = Cell(j1 + k + 1, other[j1 + k], "same")
            continue
        pairs = pair_similar(base[i1:i2], other[j1:j2])  # a changed block: pair look-alikes
        j = j1
        for i, k in [*pairs, (i2 - i1, j2 - j1)]:  # the sentinel flushes the block's tail
            added[i1 + i] += [Cell(n + 1, other[n], "changed") for n in range(j, j1 + k)]
            if i < i2 - i1:
                beside[i1 + i] = Cell(j1 + k + 1, other[j1 + k], "changed")
                j = j1 + k + 1
    return beside, added


def pair_similar(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """The in-order pairs of look-alike lines (same code, another call) that cover the most."""
    score = [[0.0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            skip = max(score[i + 1][j], score[i][j + 1])
            score[i][j] = max(skip, similarity(a[i], b[j]) + score[i + 1][j + 1])
    pairs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if score[i][j] == score[i + 1][j]:
            i += 1
        elif score[i][j] == score[i][j + 1]:
            j += 1
        else:
            pairs.append((i, j))
            i, j = i + 1, j + 1
    return pairs


def similarity(a: str, b: str) -> float:
    """How many names two lines' code shares (Dice; comments left out); 0 below the bar."""
    names_a, names_b = (set(re.findall(r"\w+", line.split("  #")[0])) for line in (a, b))
    if not a.strip() and not b.strip():
        return BLANK_SIMILARITY
    if not names_a or not names_b:
        return 0.0
    dice = 2 * len(names_a & names_b) / (len(names_a) + len(names_b))
    return dice if dice >= MIN_SIMILARITY else 0.0


def grid(scripts: dict[str, list[str]]) -> list[dict[str, Cell]]:
    """Rows of cells, one per column: the plain column's lines, with the others aligned on them."""
    base_key, *others = scripts
    base = scripts[base_key]
    aligned = {key: align(base, scripts[key]) for key in others}
    rows: list[dict[str, Cell]] = []
    for i in range(len(base) + 1):
        extra = max(len(aligned[key][1][i]) for key in others)
        for r in range(extra):
            row = {base_key: Cell(None)}
            for key in others:
                added = aligned[key][1][i]
                row[key] = added[r] if r < len(added) else Cell(None)
            rows.append(row)
        if i < len(base):
            row = {base_key: Cell(i + 1, base[i], "same")}
            for key in others:
                beside = aligned[key][0][i]
                row[key] = beside or Cell(None, state="removed" if base[i].strip() else "blank")
            rows.append(row)
    return rows


def concept_lines(scripts: dict[str, list[str]]) -> list[tuple[str, str, dict[str, int]]]:
    """Each concept with the line number of its anchor in each script (the first match)."""
    found = []
    for english, chinese, anchors in CONCEPTS:
        numbers = {}
        for key, anchor in anchors.items():
            hits = [n for n, line in enumerate(scripts[key], 1) if anchor in line]
            if not hits:
                raise SystemExit(f"error: concept {english!r}: {anchor!r} not in {key}'s script")
            numbers[key] = hits[0]
        found.append((english, chinese, numbers))
    return found


def comment_starts(lines: list[str]) -> dict[int, int]:
    """Line number -> column where its comment (or the module docstring) starts, for grey text."""
    starts: dict[int, int] = {}
    tokens = tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline)
    for token in tokens:
        if token.type == tokenize.COMMENT:
            starts[token.start[0]] = token.start[1]
        elif token.type == tokenize.STRING and token.start == (1, 0):  # the module docstring
            starts.update({n: 0 for n in range(token.start[0], token.end[0] + 1)})
    return starts


def code_html(text: str, comment_at: int | None) -> str:
    if comment_at is None:
        return html.escape(text)
    code, comment = text[:comment_at], text[comment_at:]
    return f'{html.escape(code)}<span class="c">{html.escape(comment)}</span>'


def code_only(text: str, comment_at: int | None) -> str:
    """The line without its trailing comment, for the concept table (docstrings stay whole)."""
    code = text[:comment_at] if comment_at else text
    return code.strip()


def changed_count(base: list[str], other: list[str]) -> int:
    """Lines removed plus lines added, as `diff base other | grep -c '^[<>]'` counts them."""
    diff = difflib.unified_diff(base, other, lineterm="", n=0)
    return sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def column_meta(base: list[str], other: list[str], is_base: bool) -> str:
    """`N lines`, and what the column keeps of plain's; a diff count only where the script is
    plain's line for line (most lines kept): the Trainer's loop is its own, so a count of changed
    lines would say nothing (it would exceed the lines it has)."""
    if is_base:
        return f"{len(other)} lines"
    matcher = difflib.SequenceMatcher(a=base, b=other, autojunk=False)
    kept = sum(block.size for block in matcher.get_matching_blocks())
    meta = f"{len(other)} lines, {kept} as in plain"
    return meta + (f", {changed_count(base, other)} changed" if 2 * kept >= len(other) else "")


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>One training loop, four ways · 同一个训练循环，四种写法</title>
<style>
body {{ font: 14px/1.45 system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei",
        "WenQuanYi Micro Hei", sans-serif; margin: 24px; color: #1f2328; }}
h1 {{ font-size: 22px; margin: 0 0 6px; }}
h2 {{ font-size: 17px; margin: 28px 0 8px; }}
p {{ margin: 4px 0; max-width: 1100px; }}
table {{ border-collapse: collapse; table-layout: fixed; width: 100%; }}
th {{ text-align: left; vertical-align: top; background: #f6f8fa; padding: 6px 8px;
      border: 1px solid #d0d7de; font-weight: 600; }}
td {{ vertical-align: top; border-left: 1px solid #d0d7de; border-right: 1px solid #d0d7de;
      padding: 0 6px; }}
code {{ font: 12px/1.5 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap;
        overflow-wrap: anywhere; }}
.concepts td {{ border: 1px solid #d0d7de; padding: 4px 6px; }}
.concepts a {{ color: inherit; text-decoration: none; }}
.concepts th:first-child {{ width: 150px; }}
.zh, .meta {{ color: #59636e; font-weight: 400; }}
.meta {{ display: block; font-size: 12px; }}
.line {{ display: flex; align-items: baseline; }}
.n {{ flex: none; width: 26px; color: #8c959f; text-align: right; margin-right: 8px;
      font: 11px ui-monospace, monospace; }}
.c {{ color: #6e7781; }}
.changed {{ background: #dafbe1; }}
.removed {{ background: repeating-linear-gradient(135deg, #fff0f0 0 6px, #ffe4e4 6px 12px); }}
.tag {{ display: inline-block; margin: 1px 4px 3px 34px; padding: 0 6px; border-radius: 8px;
        background: #ddf4ff; color: #0a3069; font-size: 11px; white-space: nowrap; }}
.legend span {{ display: inline-block; padding: 0 8px; margin-right: 10px; }}
</style>
</head>
<body>
<h1>One training loop, four ways · 同一个训练循环，四种写法</h1>
<p>The same task, model, data order and seed in plain PyTorch, Lightning Fabric, Hugging Face
Accelerate and the Lightning Trainer; the four write bitwise the same weights on one device.
Fabric and Accelerate are the plain script line for line: only what the framework changes
differs. 同一任务、模型、数据顺序与随机种子，分别用纯 PyTorch、Lightning Fabric、Hugging Face
Accelerate 和 Lightning Trainer 实现；单设备上四者得到逐位相同的权重。Fabric 与 Accelerate
脚本与纯 PyTorch 脚本逐行对齐，不同之处只有框架接管的部分。</p>
<p class="legend"><span class="changed">changed or added · 改动或新增</span><span
class="removed">not needed: the framework does it · 不再需要：由框架完成</span><span
class="tag">concept · 概念</span></p>
<p>Generated by <code>python minimal/side_by_side.py</code> · 由该脚本生成</p>
<h2>Concepts · 概念</h2>
<table class="concepts">
<tr><th>concept · 概念</th>{head}</tr>
{concept_rows}
</table>
<h2>The four scripts, aligned on plain PyTorch · 四个脚本，按纯 PyTorch 对齐</h2>
<table class="code">
<tr>{head}</tr>
{code_rows}</table>
</body>
</html>
"""


def render(scripts: dict[str, list[str]]) -> str:
    keys = list(scripts)
    concepts = concept_lines(scripts)
    comments = {key: comment_starts(lines) for key, lines in scripts.items()}
    badges: dict[tuple[str, int], list[str]] = {}
    for english, chinese, numbers in concepts:
        for key, number in numbers.items():
            badges.setdefault((key, number), []).append(f"{english} · {chinese}")

    def cell_html(key: str, cell: Cell) -> str:
        if cell.number is None:
            return f'<td class="{cell.state}"></td>'
        tags = "".join(f'<span class="tag">{t}</span>' for t in badges.get((key, cell.number), []))
        code = code_html(cell.text, comments[key].get(cell.number))
        return (
            f'<td class="{cell.state}" id="{key}-{cell.number}"><div class="line"><span class="n">'
            f"{cell.number}</span><code>{code}</code></div>{tags}</td>"
        )

    head = "".join(
        f"<th>{html.escape(SCRIPTS[k][0])}<br><code>minimal/{SCRIPTS[k][1]}</code>"
        f'<span class="meta">{column_meta(scripts[keys[0]], scripts[k], k == keys[0])}</span></th>'
        for k in keys
    )

    def concept_cell(key: str, number: int) -> str:
        code = code_only(scripts[key][number - 1], comments[key].get(number))
        return (
            f'<td><a href="#{key}-{number}"><div class="line"><span class="n">{number}</span>'
            f"<code>{html.escape(code)}</code></div></a></td>"
        )

    concept_rows = "".join(
        f'<tr><th>{english}<br><span class="zh">{chinese}</span></th>'
        + "".join(concept_cell(k, numbers[k]) for k in keys)
        + "</tr>\n"
        for english, chinese, numbers in concepts
    )
    code_rows = "".join(
        "<tr>" + "".join(cell_html(k, row[k]) for k in keys) + "</tr>\n" for row in grid(scripts)
    )
    return PAGE.format(head=head, concept_rows=concept_rows, code_rows=code_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the page to write")
    args = parser.parse_args()
    args.out.write_text(render(read_scripts(HERE)), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
