"""The demo competition: a seeded generator of synthetic English reviews, so the pipeline runs with no third-party text.

Reads nothing. Writes `train.csv`, `test.csv`, `sample_submission.csv` and `unlabelled.csv` into one folder
(`python -m dontstop.demo --out input/demo`). Every text is built from the templates and word lists below; its
labels are a noisy function of what the text says, so a sentence encoder can learn them from meaning:

- each review has 1-4 sentiment clauses "<aspect noun> was [not|very|slightly] <adjective>"; an adjective has a
  strength in -2..+2, an intensifier scales it, a negation flips and halves it;
- the latent score is the mean clause effect + a little of the title's + a topic effect + the reviewer's
  harshness + gaussian noise, mapped to 1..5;
- the reviewer (`group`) writes 1-4 reviews, shares a mood and a harshness across them, mostly about one topic,
  so grouped folds matter.

Same seed, same bytes; `make_competition` is pure and is what the tests exercise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dontstop.io import write_csv

TOPICS = ("food", "hotel", "electronics", "books")  # the multiclass classes; the first fills sample_submission
ASPECTS = ("food", "price", "staff", "location")  # the multilabel columns: which aspects a review mentions
TARGETS = {
    "regression": ["score"],
    "multi_target_regression": ["quality", "service", "value"],
    "binary": ["label"],
    "multiclass": ["topic"],
    "multilabel": list(ASPECTS),
}
TASKS = tuple(TARGETS)

# --- word lists: nouns per topic and aspect ("quality" = the thing itself), adjectives per strength -------------
NOUNS = {
    "quality": {
        "food": ["the atmosphere", "the decor", "the restaurant", "the place", "the music", "the terrace", "the menu"],
        "hotel": ["the room", "the bed", "the bathroom", "the shower", "the pool", "the lobby", "the balcony"],
        "electronics": ["the laptop", "the battery", "the screen", "the keyboard", "the charger", "the speaker",
                        "the camera", "the headset", "the sound quality", "the build quality"],
        "books": ["the plot", "the ending", "the novel", "the main character", "the writing", "the dialogue",
                  "the pacing", "the translation", "the story"],
    },
    "food": {
        "food": ["the pasta", "the soup", "the steak", "the curry", "the pizza", "the salad", "the dessert",
                 "the bread", "the coffee", "the fish"],
        "hotel": ["the breakfast", "the buffet", "the coffee", "the room service food", "the dinner menu"],
        "electronics": ["the free snack in the box"],
        "books": ["the recipes", "the recipe section"],
    },
    "price": {
        "food": ["the bill", "the price", "the value for money", "the wine price"],
        "hotel": ["the nightly rate", "the room rate", "the price", "the value for money"],
        "electronics": ["the price tag", "the price", "the value for money", "the extended warranty price"],
        "books": ["the cover price", "the price", "the paperback price"],
    },
    "staff": {
        "food": ["the waiter", "the waitress", "the service", "the kitchen staff"],
        "hotel": ["the receptionist", "the front desk", "the staff", "the housekeeping team"],
        "electronics": ["the support team", "the customer service", "the sales assistant"],
        "books": ["the bookseller", "the shop staff", "the customer service"],
    },
    "location": {
        "food": ["the location", "the neighbourhood", "the parking"],
        "hotel": ["the location", "the area", "the street", "the view"],
        "electronics": ["the store location", "the pickup point"],
        "books": ["the shop location", "the setting of the story"],
    },
}
GENERIC_NOUNS = ["the experience", "the whole thing", "the first impression", "the overall quality"]
ADJECTIVES = {  # strength -> adjectives that read naturally after "was" for any noun
    -2: ["awful", "terrible", "dreadful", "horrible", "appalling"],
    -1: ["poor", "disappointing", "mediocre", "subpar", "underwhelming"],
    0: ["fine", "okay", "average", "acceptable", "ordinary"],
    1: ["good", "nice", "solid", "pleasant", "decent"],
    2: ["excellent", "superb", "outstanding", "wonderful", "fantastic"],
}
ASPECT_ADJECTIVES = {  # used plain only: "very a bargain" does not read
    "food": {-2: ["inedible", "disgusting"], -1: ["bland", "stale", "greasy"], 0: ["ordinary", "plain"],
             1: ["tasty", "fresh"], 2: ["delicious", "mouth-watering"]},
    "price": {-2: ["outrageous", "extortionate"], -1: ["steep", "overpriced"], 0: ["typical", "about average"],
              1: ["reasonable", "fair"], 2: ["unbeatable", "a real bargain"]},
    "staff": {-2: ["rude", "hostile"], -1: ["slow", "careless", "unhelpful"], 0: ["businesslike", "polite enough"],
              1: ["friendly", "helpful"], 2: ["attentive", "charming"]},
    "location": {-2: ["dangerous", "grim"], -1: ["noisy", "inconvenient"], 0: ["unremarkable", "central enough"],
                 1: ["convenient", "quiet"], 2: ["ideal", "perfect"]},
}
INTENSIFIERS = [  # (words, multiplier, the one adjective strength they pair with)
    ("very", 1.5, 1), ("really", 1.5, 1), ("quite", 1.25, 1), ("extremely", 1.75, 1), ("slightly", 0.5, 1),
    ("a bit", 0.5, 1), ("somewhat", 0.6, 1), ("absolutely", 1.25, 2), ("truly", 1.2, 2),
]
NEGATORS = ["not", "not exactly", "not really", "far from"]  # effect = -0.5 * strength: "not bad" is mildly good
TEMPLATES = [
    "{NP} was {phrase}.", "I thought {np} was {phrase}.", "Honestly, {np} was {phrase}.",
    "To be honest {np} was {phrase}.", "{NP} felt {phrase} to me.", "In my opinion {np} was {phrase}.",
    "We all agreed that {np} was {phrase}.", "I have to say {np} was {phrase}.",
]
JOINERS = [", and {np} was {phrase}.", ", but {np} was {phrase}.", "; {np} was {phrase} as well."]
FILLERS = {  # neutral sentences: length and topic cues, no sentiment
    "food": ["We went there for a birthday dinner.", "We booked a table for four on a Friday.",
             "It was our first visit.", "We sat near the window.", "We arrived a little after seven.",
             "My partner picked this place from a list online.", "We shared two starters and a main.",
             "We had been meaning to try it since it opened last year, and finally went with friends."],
    "hotel": ["We stayed three nights in early spring.", "I was in town for a conference.",
              "We checked in late in the evening.", "It was a short family trip.", "We booked through a travel site.",
              "Our room was on the fourth floor.",
              "We had planned the trip for months and picked this hotel after comparing a dozen others."],
    "electronics": ["I bought it to replace an older model.", "It arrived two days after I ordered it.",
                    "I have used it every day for a month.", "I mostly use it for work calls.",
                    "The box included a short manual.", "I compared three models before ordering.",
                    "My old one finally stopped working after six years, so I spent an evening reading about options."],
    "books": ["I read it over a long weekend.", "A friend lent me her copy.", "I picked it up at an airport shop.",
              "It is the second book in a series.", "Our book club chose it this month.",
              "I listened to part of it as an audiobook.",
              "I had heard a lot about the author and finally bought a copy on holiday this summer."],
    "generic": ["I will keep this review short.", "This is my honest opinion.",
                "I am not usually one to write reviews.", "Here is what I noticed.", "Your experience may differ.",
                "I had read a few reviews beforehand.",
                "I wanted to write this down properly because the reviews I read before were not much help."],
}
TITLE_NOUNS = {"food": ["dinner", "lunch", "restaurant", "meal"], "hotel": ["stay", "hotel", "weekend away"],
               "electronics": ["laptop", "gadget", "purchase"], "books": ["read", "novel", "book"]}
# Why these numbers: with 600 rows they keep a TF-IDF baseline well above chance yet well below perfect
# (tests/test_demo.py measures it), leaving room for a pretrained encoder, which already knows what "awful" means.
TOPIC_EFFECT = {"food": 0.2, "hotel": -0.1, "electronics": -0.2, "books": 0.1}  # in score points
ASPECT_WEIGHTS = {  # chance a clause is about quality / food / price / staff / location, per topic
    "food": [0.35, 0.35, 0.1, 0.12, 0.08], "hotel": [0.4, 0.12, 0.13, 0.18, 0.17],
    "electronics": [0.55, 0.02, 0.2, 0.18, 0.05], "books": [0.65, 0.05, 0.15, 0.08, 0.07],
}
SCORE_SLOPE = 0.85  # score points per unit of mean clause effect: effects of about +-2 span most of 1..5
SCORE_NOISE, HARSHNESS_SD = 0.25, 0.2  # per-review noise; per-reviewer offset, shared within a group
POLARITY, MOOD_SD = 1.1, 0.5  # mood = reviewer's + (+-POLARITY) + noise: the pleased and the annoyed write reviews
CLAUSE_SD = 0.35  # how far one clause strays from the review's mood
TITLE_WEIGHT = 0.15  # a title's adjective counts a little, so joining title and text pays
LABEL_FLIP, TOPIC_FLIP, MENTION_FLIP = 0.05, 0.04, 0.03  # annotator noise for binary / multiclass / multilabel


def make_competition(task: str, n_train: int, n_test: int, n_pool: int = 0, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Pure: returns {"train", "test", "sample_submission", "unlabelled"} DataFrames for one task type."""
    if task not in TARGETS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    for name, n in (("n_train", n_train), ("n_test", n_test), ("n_pool", n_pool)):
        if int(n) != n or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(seed)
    sizes = {"train": int(n_train), "test": int(n_test), "unlabelled": int(n_pool)}
    ids = iter(f"d{i:07x}" for i in rng.choice(16**7, size=sum(sizes.values()), replace=False))
    seen_texts: set[str] = set()  # train is drawn first, so test and pool never repeat a train text
    splits, n_reviewers = {}, 0
    for split, n_rows in sizes.items():
        rows = []
        while len(rows) < n_rows:
            n_reviewers += 1
            reviewer = {"group": f"u{n_reviewers:05d}", "topic": TOPICS[rng.integers(len(TOPICS))],
                        "mood": rng.normal(0, MOOD_SD), "harshness": rng.normal(0, HARSHNESS_SD)}
            for _ in range(min(int(rng.integers(1, 5)), n_rows - len(rows))):
                rows.append(_review(rng, reviewer, seen_texts) | {"id": next(ids)})
        order = rng.permutation(n_rows)  # a reviewer's rows are not adjacent, as in a real file
        splits[split] = [rows[i] for i in order]
    targets = TARGETS[task]
    train = pd.DataFrame([_row(r, ["id", "text", "title", "group"] + targets) for r in splits["train"]],
                         columns=["id", "text", "title", "group"] + targets)
    test = pd.DataFrame([_row(r, ["id", "text", "title", "group"]) for r in splits["test"]],
                        columns=["id", "text", "title", "group"])
    fill = TOPICS[0] if task == "multiclass" else 3.0 if "regression" in task else 0.5
    sample_submission = pd.DataFrame({"id": test["id"], **{col: fill for col in targets}},
                                     columns=["id"] + targets)
    unlabelled = pd.DataFrame([_row(r, ["id", "text", "title"]) for r in splits["unlabelled"]],
                              columns=["id", "text", "title"])
    return {"train": train, "test": test, "sample_submission": sample_submission, "unlabelled": unlabelled}


def _row(review: dict, columns: list[str]) -> dict:
    return {col: review[col] for col in columns}


def _review(rng: np.random.Generator, reviewer: dict, seen_texts: set[str]) -> dict:
    """One review with every task's labels; redrawn until its text is new."""
    for _ in range(1000):
        topic = reviewer["topic"] if rng.random() < 0.75 else TOPICS[rng.integers(len(TOPICS))]
        mood = reviewer["mood"] + POLARITY * rng.choice([-1, 1]) + rng.normal(0, MOOD_SD)
        clauses = [_clause(rng, topic, mood) for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.3, 0.2])))]
        sentences, i = [], 0
        while i < len(clauses):  # sometimes two clauses share a sentence
            _, np_, phrase, _ = clauses[i]
            sentence = TEMPLATES[rng.integers(len(TEMPLATES))].format(NP=np_[0].upper() + np_[1:], np=np_,
                                                                      phrase=phrase)
            if i + 1 < len(clauses) and clauses[i + 1][1] != np_ and rng.random() < 0.25:
                joiner = JOINERS[rng.integers(len(JOINERS))]
                sentence = sentence[:-1] + joiner.format(np=clauses[i + 1][1], phrase=clauses[i + 1][2])
                i += 1
            sentences.append(sentence)
            i += 1
        n_fillers = int(rng.integers(1 if len(clauses) == 1 else 0, 5))
        fillers = FILLERS[topic] + FILLERS["generic"]  # topic-specific ones are likelier: there are more of them
        for filler in rng.choice(fillers, size=n_fillers, replace=False):
            sentences.insert(int(rng.integers(len(sentences) + 1)), str(filler))
        text = " ".join(sentences)
        if text not in seen_texts:
            break
    else:
        raise RuntimeError("demo generator ran out of distinct texts; lower n_train/n_test/n_pool")
    seen_texts.add(text)
    title, title_strength = _title(rng, topic, mood)

    text_tone = _mean([c[3] for c in clauses]) + TITLE_WEIGHT * title_strength
    offset = TOPIC_EFFECT[topic] + reviewer["harshness"]
    score = 3 + SCORE_SLOPE * text_tone + offset + rng.normal(0, SCORE_NOISE)

    def aspect_score(aspects: tuple[str, ...]) -> float:
        # An aspect nobody wrote about still leans on the review's overall tone.
        mentioned = [c[3] for c in clauses if c[0] in aspects]
        tone = _mean(mentioned) if mentioned else 0.6 * _mean([c[3] for c in clauses])
        return _to_scale(3 + SCORE_SLOPE * tone + offset + rng.normal(0, SCORE_NOISE))

    tone = text_tone + rng.normal(0, 0.2)  # positive or negative is what the words say, not the reviewer's harshness
    label = int(tone > 0) ^ int(rng.random() < LABEL_FLIP)
    out = {"text": text, "title": title, "group": reviewer["group"], "score": _to_scale(score), "label": label,
           "topic": topic if rng.random() >= TOPIC_FLIP else TOPICS[rng.integers(len(TOPICS))],
           "quality": aspect_score(("quality", "food")), "service": aspect_score(("staff",)),
           "value": aspect_score(("price",))}
    for aspect in ASPECTS:
        mentioned = any(c[0] == aspect for c in clauses)
        out[aspect] = int(mentioned) ^ int(rng.random() < MENTION_FLIP)
    return out


def _to_scale(x: float) -> float:
    return round(_clip(float(x), 1.0, 5.0), 2)


def _clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _clause(rng: np.random.Generator, topic: str, mood: float) -> tuple[str, str, str, float]:
    """(aspect, noun phrase, "[modifier] adjective", effect): the effect is what the words say, near the mood."""
    aspect = (("quality",) + ASPECTS)[rng.choice(5, p=ASPECT_WEIGHTS[topic])]
    nouns = NOUNS[aspect][topic] if aspect != "quality" or rng.random() < 0.85 else GENERIC_NOUNS
    noun = nouns[rng.integers(len(nouns))]
    target = mood + rng.normal(0, CLAUSE_SD)
    form = rng.random()
    if aspect != "quality" and form < 0.3:
        strength = int(_clip(round(target), -2, 2))
        words = ASPECT_ADJECTIVES[aspect][strength]
        return aspect, noun, words[rng.integers(len(words))], float(strength)
    if form < 0.55:
        strength = int(_clip(round(target), -2, 2))
        return aspect, noun, _adjective(rng, strength), float(strength)
    sign = 1 if target >= 0 else -1
    if form < 0.8:  # intensified: the closest-fitting intensifier, with a little randomness in the choice
        fits = [abs(mult * mag * sign - target) + 0.3 * rng.random() for _, mult, mag in INTENSIFIERS]
        word, mult, mag = INTENSIFIERS[int(np.argmin(fits))]
        return aspect, noun, f"{word} {_adjective(rng, mag * sign)}", mult * mag * sign
    strength = -2 * sign if abs(target) > 0.75 else -sign  # negated: "not awful" = +1, "not good" = -0.5
    negator = NEGATORS[rng.integers(len(NEGATORS))]
    return aspect, noun, f"{negator} {_adjective(rng, strength)}", -0.5 * strength


def _adjective(rng: np.random.Generator, strength: int) -> str:
    words = ADJECTIVES[strength]
    return words[rng.integers(len(words))]


def _title(rng: np.random.Generator, topic: str, mood: float) -> tuple[str, int]:
    """A short phrase; most titles carry their own sentiment, which counts a little toward the score."""
    noun = TITLE_NOUNS[topic][rng.integers(len(TITLE_NOUNS[topic]))]
    if rng.random() < 0.35:
        neutral = [f"My {noun}", f"Thoughts on the {noun}", f"{noun.capitalize()} review", "A few words"]
        return neutral[rng.integers(len(neutral))], 0
    strength = int(_clip(round(mood + rng.normal(0, 0.5)), -2, 2))
    return f"{_adjective(rng, strength).capitalize()} {noun}", strength


def write_demo(out_dir: str | Path = "input/demo", task: str = "regression", n_train: int = 600, n_test: int = 200,
               n_pool: int = 400, seed: int = 0) -> Path:
    """Writes train.csv, test.csv, sample_submission.csv, unlabelled.csv into out_dir (atomically); returns out_dir."""
    out_dir = Path(out_dir)
    for name, df in make_competition(task, n_train, n_test, n_pool, seed).items():
        write_csv(out_dir / f"{name}.csv", df)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dontstop.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="input/demo", help="folder to write the four CSV files into")
    parser.add_argument("--task", default="regression", choices=TASKS)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-pool", type=int, default=400, help="rows of unlabelled.csv (for MLM and pseudo-labels)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out_dir = write_demo(args.out, args.task, args.n_train, args.n_test, args.n_pool, args.seed)
    for name in ("train", "test", "sample_submission", "unlabelled"):
        df = pd.read_csv(out_dir / f"{name}.csv")
        print(f"wrote {out_dir / name}.csv: {len(df)} rows, columns {', '.join(df.columns)}")
    print(f"task {args.task}, seed {args.seed}; target column(s): {', '.join(TARGETS[args.task])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
