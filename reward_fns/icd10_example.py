"""Example of a user-defined query_type: ICD-10 codes, full credit for the code, half for its category.

Load it in every reward worker with
    +reward.custom_reward_function.reward_kwargs.plugins=[/abs/path/to/reward_fns/icd10_example.py]
and give rows ``extra_info.query_type = "icd10"``.
"""

import re

from medverl.rewards import Verdict, register

_CODE = re.compile(r"\b([A-Z]\d{2})(?:\.?(\w{1,4}))?\b")


@register("icd10")
def icd10(answer: str, golds: tuple[str, ...]) -> Verdict:
    """ICD-10 code match: 1.0 for the same code, 0.5 for the same three-character category."""
    codes = {m.group(0).replace(".", "") for m in _CODE.finditer(answer.upper())}
    if len(codes) != 1:
        return Verdict(0.0, reason=f"expected one ICD-10 code, found {len(codes)}")
    pred = codes.pop()
    refs = [g.upper().replace(".", "").strip() for g in golds]
    acc = 1.0 if pred in refs else 0.5 if any(pred[:3] == r[:3] for r in refs) else 0.0
    return Verdict(acc, pred=pred, reason="" if acc == 1.0 else "same category" if acc else "wrong code")
