"""How well the built-in decoder follows a findings list written in words, before any FedMRG training.

For held-out reports, the decoder gets the report's diagnosis prompt in words (labels from the labeler, see
:mod:`fedmrg.report.diagnosis_prompt`) and writes a report greedily; the labeler reads the generated report and the CE
metrics compare it with the prompt's labels. The same with each prompt given to another report ("shuffled") shows how
much of the score comes from the prompt. Prints both; CE-F1 is example-based (PromptMRG).

    python scripts/lm_prompt_following.py [--n 100] [--threads 2]          # neutral held-out reports
    python scripts/lm_prompt_following.py --data DIR [--n 120]             # DIR's in-domain test reports
    python scripts/lm_prompt_following.py --data DIR --warmup-on-train     # also a decoder warmed up on DIR's
                                                                           # training reports (built and cached)
    python scripts/lm_prompt_following.py --data DIR --random-prefix 16    # also with 16 random vectors before the
                                                                           # prompt, where FedMRG's visual tokens go
    python scripts/lm_prompt_following.py --data DIR --random-prefix 16 --prefix-position after
                                                                           # the same vectors between prompt and BOS
"""

from __future__ import annotations

import argparse
import random

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedmrg.labels import label_reports
from fedmrg.metrics.clinical import clinical_efficacy
from fedmrg.observations import OBSERVATIONS, csv_to_state
from fedmrg.report.builtin import ensure_builtin_models, warmup_corpus
from fedmrg.report.builtin_recipe import BuiltinRecipe
from fedmrg.report.diagnosis_prompt import DiagnosisPrompt


def follow(
    decoder_dir,
    texts: list[str],
    name: str,
    max_new_tokens: int,
    prefix: torch.Tensor | None = None,
    position: str = "before",
) -> None:
    """Print own-prompt and shuffled-prompt CE-F1 of the decoder in ``decoder_dir`` on ``texts``; ``prefix`` (N, d):
    stand-ins for FedMRG's visual tokens, placed before the prompt (``position="before"``, FedMRG's layout) or
    between the prompt and BOS (``"after"``)."""
    tok = AutoTokenizer.from_pretrained(decoder_dir)
    lm = AutoModelForCausalLM.from_pretrained(decoder_dir).eval()
    embed = lm.get_input_embeddings()
    labels = label_reports(texts)
    prompt = DiagnosisPrompt(tok)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    # generation k is prompted with the labels of report source[k] and scored against report k's labels
    for kind, source in (("own prompt", list(range(len(texts)))), ("shuffled prompt", order)):
        hyp = []
        for i in tqdm(source, desc=f"{name}, {kind}"):
            words = embed(torch.tensor(prompt.word_ids([int(csv_to_state(labels[i][o])) for o in OBSERVATIONS])))
            bos = embed(torch.tensor([tok.bos_token_id]))
            parts = [words, bos]
            if prefix is not None:
                parts.insert(0 if position == "before" else 1, prefix.to(words.dtype))
            x = torch.cat(parts)
            with torch.no_grad():  # from inputs_embeds, generate returns the new tokens only
                out = lm.generate(inputs_embeds=x[None], attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                  max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)  # fmt: skip
            hyp.append(tok.decode(out[0], skip_special_tokens=True))
        ref = [[row[o] for o in OBSERVATIONS] for row in labels]
        pred = [[row[o] for o in OBSERVATIONS] for row in label_reports(hyp)]
        ce = clinical_efficacy(pred, ref)
        print(f"{name}, {kind}: CE-F1 example-based {ce['example_based']['f1']:.3f}, micro {ce['micro']['f1']:.3f}, "
              f"macro {ce['macro']['f1']:.3f}, {len(set(hyp))} distinct reports of {len(hyp)}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="reports to write (default 100)")
    ap.add_argument("--data", help="federated dataset directory (fedmrg data prepare): use its in-domain test reports")
    ap.add_argument("--warmup-on-train", action="store_true",
                    help="with --data: also a decoder warmed up on the data's training reports instead of the neutral "
                         "corpus (same recipe)")  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--random-prefix", type=int, default=0, metavar="N",
                    help="also with N random vectors before the prompt (FedMRG's visual tokens stand in front of it), "
                         "of norm 0.01 (an untrained projector) and 0.8 (trained visual tokens)")  # fmt: skip
    ap.add_argument(
        "--prefix-position",
        choices=("before", "after"),
        default="before",
        help="where the random vectors go: before the prompt (FedMRG's layout) or between prompt and BOS",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.warmup_on_train and not args.data:
        ap.error("--warmup-on-train needs --data")
    torch.set_num_threads(args.threads)
    if args.data:
        from fedmrg.data.dataset_dir import FederatedDataset

        fd = FederatedDataset.open(args.data)
        texts = [r.report for r in fd.test()][: args.n]
    else:
        texts = warmup_corpus(BuiltinRecipe())[1][: args.n]
    decoder_dir = ensure_builtin_models().decoder_dir
    follow(decoder_dir, texts, "neutral warm-up", args.max_new_tokens)
    if args.random_prefix:
        d = AutoModelForCausalLM.from_pretrained(decoder_dir).config.hidden_size
        gen = torch.Generator().manual_seed(0)
        for norm in (0.01, 0.8):
            prefix = torch.nn.functional.normalize(torch.randn(args.random_prefix, d, generator=gen), dim=-1) * norm
            follow(decoder_dir, texts,
                   f"neutral warm-up, {args.random_prefix} random vectors of norm {norm} {args.prefix_position} the prompt",
                   args.max_new_tokens, prefix, args.prefix_position)  # fmt: skip
    if args.warmup_on_train:
        train = [r.report for s in fd.sites for r in fd.split(s, "train")]
        follow(ensure_builtin_models(corpus=train).decoder_dir, texts, "training-report warm-up", args.max_new_tokens)


if __name__ == "__main__":
    main()
