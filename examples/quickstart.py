"""Quick start: chain the datapipes over a Hugging Face dataset and iterate PackedBatches.

    python examples/quickstart.py                      # on generated reviews
    python examples/quickstart.py --train-file train.parquet

Runs in a few seconds on a CPU. Shows the pipeline's padding efficiency and resumes mid-epoch.
"""

from __future__ import annotations

import argparse
import random

import datasets

from seqbucket_plugin.datapipes import Pipe, TextTokenizer, load_classification


def generated_reviews(n: int = 5000, seed: int = 0) -> datasets.Dataset:
    """Short and long 'reviews' of random words with a sentiment label, lengths 3 to ~600 words."""
    rng = random.Random(seed)
    good, bad = ["great", "moving", "superb", "fun"], ["dull", "awful", "boring", "weak"]
    filler = [f"w{i}" for i in range(2000)]
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        length = min(600, int(rng.lognormvariate(4.5, 0.8)) + 3)
        words = [rng.choice(filler) for _ in range(length)]
        words[rng.randrange(length)] = rng.choice(good if label else bad)
        texts.append(" ".join(words))
        labels.append(label)
    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-file", help="a local .parquet/.csv/.tsv/.jsonl file with text and label columns")
    parser.add_argument("--max-tokens", type=int, default=8192)
    args = parser.parse_args()

    train = load_classification(args.train_file) if args.train_file else generated_reviews()
    tokenizer = TextTokenizer.train(train, kind="word", vocab_size=20_000, min_frequency=2)

    pipe = (
        Pipe.from_hf(train)
        .tokenize(tokenizer, max_length=1024, truncation="head+tail")
        .bucket_batch(max_tokens=args.max_tokens, seed=0)
        .pack()
    )
    loader = pipe.loader()
    for step, batch in enumerate(loader):
        if step == 0:
            print(f"first batch: input_ids {tuple(batch.input_ids.shape)}, lengths on {batch.lengths.device}, "
                  f"labels {tuple(batch.labels.shape)}")
        if step == 10:
            state = loader.state_dict()  # e.g. saved in a checkpoint
    stats = pipe.stats
    print(f"epoch: {stats.batches} batches, {stats.examples} examples, {stats.real_tokens} tokens, "
          f"padding efficiency {stats.padding_efficiency:.1%}")

    resumed = pipe.loader()
    resumed.load_state_dict(state)
    print(f"resumed after step 10: {sum(1 for _ in resumed)} batches left in the epoch")


if __name__ == "__main__":
    main()
