"""How well the built-in decoder follows a findings list written in words, before any FedMRG training.

For held-out neutral-corpus reports, the decoder gets the report's diagnosis prompt in words (labels from the
labeler, see :mod:`fedmrg.report.diagnosis_prompt`) and writes a report greedily; the labeler reads the generated
report and the CE metrics compare it with the prompt's labels. The same with each prompt given to another report
("shuffled") shows how much of the score comes from the prompt. Prints both; CE-F1 is example-based (PromptMRG).

    python scripts/lm_prompt_following.py [--n 100] [--threads 2]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="held-out reports (default 100)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = ensure_builtin_models()
    tok = AutoTokenizer.from_pretrained(models.decoder_dir)
    lm = AutoModelForCausalLM.from_pretrained(models.decoder_dir).eval()
    _, heldout = warmup_corpus(BuiltinRecipe())
    texts = heldout[: args.n]
    labels = label_reports(texts)
    prompt = DiagnosisPrompt(tok)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    # generation k is prompted with the labels of report source[k] and scored against report k's labels
    for name, source in (("own prompt", list(range(len(texts)))), ("shuffled prompt", order)):
        hyp = []
        for i in tqdm(source, desc=name):
            ids = prompt.word_ids([int(csv_to_state(labels[i][o])) for o in OBSERVATIONS]) + [tok.bos_token_id]
            with torch.no_grad():
                out = lm.generate(torch.tensor([ids]), max_new_tokens=96, do_sample=False,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
            hyp.append(tok.decode(out[0, len(ids):], skip_special_tokens=True))
        ref = [[row[o] for o in OBSERVATIONS] for row in labels]
        pred = [[row[o] for o in OBSERVATIONS] for row in label_reports(hyp)]
        ce = clinical_efficacy(pred, ref)
        print(f"{name}: CE-F1 example-based {ce['example_based']['f1']:.3f}, micro {ce['micro']['f1']:.3f}, "
              f"macro {ce['macro']['f1']:.3f}")  # fmt: skip

if __name__ == "__main__":
    main()
