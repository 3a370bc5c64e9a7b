"""Rows longer than max_length in an SFT dataset: counted per split, then dropped or kept cut (`overlong`).

TRL truncates such rows silently; `spri-sft train` tokenizes first (`spri_sft.train.sft`), so it can say how
many there are and what cutting them costs (a lost end-of-turn token, no trained token left), in one summary
line and <output_dir>/lengths.json.
"""

from __future__ import annotations


def overlong_rows(splits: dict, eos_id: int, training_args, policy: str) -> dict:
    """How many tokenized rows of each split exceed max_length, and what cutting them would cost.

    Per split: `rows`, `over_max_length`, `lost_eos` (rows whose kept window, as TRL cuts it, loses a trained EOS),
    `no_trained_token` (rows with no trained token left: TRL drops them when it keeps overlong rows), `dropped`
    (rows that will not be trained on: all overlong ones under 'drop'), and `longest`. Packing cuts like
    truncation_mode keep_start (TRL's bfd packing truncates an overflowing sequence)."""
    max_length = training_args.max_length
    keep_end = training_args.truncation_mode == "keep_end" and not training_args.packing
    counts = {}
    for name, dataset in splits.items():
        if dataset is None:
            continue
        split = {"rows": len(dataset), "over_max_length": 0, "lost_eos": 0, "no_trained_token": 0, "dropped": 0,
                 "longest": 0}  # fmt: skip
        rows = (
            row for batch in dataset.iter(batch_size=1000) for row in zip(batch["input_ids"], batch["assistant_masks"])
        )
        for ids, mask in rows:
            split["longest"] = max(split["longest"], len(ids))
            if max_length is None or len(ids) <= max_length:
                continue
            split["over_max_length"] += 1
            kept = range(len(ids) - max_length, len(ids)) if keep_end else range(max_length)
            trained = [i for i, bit in enumerate(mask) if bit]
            if any(ids[i] == eos_id and i not in kept for i in trained):
                split["lost_eos"] += 1
            if not any(i in kept for i in trained):
                split["no_trained_token"] += 1
        split["dropped"] = split["over_max_length"] if policy == "drop" else split["no_trained_token"]
        counts[name] = split
    return {"max_length": max_length, "policy": policy, "packing": bool(training_args.packing),
            "truncation_mode": "keep_start" if not keep_end else "keep_end", "splits": counts}  # fmt: skip


def drop_overlong(dataset, max_length: int | None):
    if dataset is None or max_length is None:
        return dataset
    return dataset.filter(
        lambda row: len(row["input_ids"]) <= max_length, desc=f"Dropping rows over {max_length} tokens"
    )


def lengths_line(lengths: dict) -> str:
    """One line on the rows over max_length, for the training summary (never silent, 0 included)."""
    train = lengths["splits"]["train"]
    over, rows = train["over_max_length"], train["rows"]
    line = f"[spri-sft]   {over} of {rows} train rows exceed max_length={lengths['max_length']} tokens"
    if over:
        if lengths["policy"] == "drop":
            line += " and are dropped (overlong: drop)"
        else:
            line += (
                f": kept cut to max_length, {train['lost_eos']} lost their end-of-turn token, "
                f"{train['no_trained_token']} kept no trained token and are dropped by TRL (overlong: keep)"
            )
    validation = lengths["splits"].get("validation")
    if validation and validation["over_max_length"]:
        line += f"; validation {validation['over_max_length']} of {validation['rows']}"
    return line + f" (longest {train['longest']})"
