"""Rule tables of the labeler: mention, attribute, negation and uncertainty patterns (our own, regex).

The design follows the Stanford CheXpert labeler (mention lists per observation, unmentions that veto a
match, then uncertainty-before-negation -> negation -> uncertainty, then aggregation) but the rules are
written here as surface patterns, NegEx style, instead of NegBio's dependency-graph patterns, which need a
parser model and Java. All patterns run on :func:`fedmrg.labels.text.normalize`-d (lower-case) clauses.

Two kinds of mention:

- a *finding* names the abnormality itself ("cardiomegaly", "effusion"); it is positive unless negated or
  uncertain.
- an *attribute* names a structure whose state the sentence gives ("heart size", "mediastinal contour"); it
  counts only with a qualifier nearby: an abnormal one ("enlarged") makes a mention at the qualifier, classified
  like a finding ("not enlarged" -> negative); a normal one ("within normal limits") makes a negative mention.
  A bare attribute ("heart size is stable") is no mention. This departs from CheXpert, which counts "heart
  size" alone as a Cardiomegaly mention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def words(*phrases: str) -> re.Pattern[str]:
    """One pattern matching any of ``phrases`` (regex syntax allowed) starting at a word boundary.

    A phrase matches as a prefix ("atelecta" matches "atelectasis", "atelectatic") unless it ends in ``\\b``.
    """
    return re.compile(r"\b(?:" + "|".join(phrases) + ")")


@dataclass(frozen=True)
class Attribute:
    """A structure whose qualifier decides an observation.

    Args:
        subject: the structure ("heart size", "cardiac silhouette").
        abnormal: qualifiers meaning the observation is present ("enlarged", "widened").
        normal: qualifiers meaning it is absent ("normal", "within normal limits").
        words_after: how many words after the subject a qualifier may stand ("heart size is at the upper limits of
            normal"); words before are limited to :data:`ATTRIBUTE_WORDS_BEFORE`. A comma between subject and
            qualifier disqualifies the pair.
    """

    subject: re.Pattern[str]
    abnormal: re.Pattern[str]
    normal: re.Pattern[str]
    words_after: int = 7


ATTRIBUTE_WORDS_BEFORE = 3

_NORMAL_SIZE = words(
    r"normal\b",
    r"within (?:the )?(?:range of )?normal",
    r"unremarkable",
    r"upper limits? (?:of )?normal",
    r"top (?:of )?normal",
    r"top-normal",
    r"high normal",
    r"(?:is |are )?not (?:\w+ )?(?:enlarged|widened)",
    r"non-?enlarged",
    r"negative\b",
)

# ---------------------------------------------------------------------------------------------------------------
# Mentions, per observation
# ---------------------------------------------------------------------------------------------------------------

#: Finding mentions: each match is one mention of the observation.
FINDINGS: dict[str, re.Pattern[str]] = {
    "Enlarged Cardiomediastinum": words(
        r"cardiomediastinal enlargement",
        r"mediastinal (?:widening|enlargement)",
        # The nominal form, which the positional veto "of the mediastinum" (ATTRIBUTE_UNMENTIONS) would drop.
        r"(?:widening|enlargement|prominence) of (?:the )?(?:superior |upper )?(?:cardio)?mediastin(?:um|al)",
    ),
    "Cardiomegaly": words(r"cardiomegaly", r"cardiac enlargement", r"cardiomyopathy"),
    "Lung Opacity": words(
        r"opaci",
        r"air[- ]?space (?:disease|process|opaci|consolidat)",
        r"infiltrat",
        r"interstitial (?:marking|pattern|prominence|thickening|opaci|process|disease|lung disease)",
        r"reticular (?:pattern|marking|opaci|densit)",
        r"reticulonodular",
        r"increased (?:lung |pulmonary |interstitial |parenchymal )?(?:density|densities|markings)",
        r"haziness",
        r"hazy",
        r"ground[- ]glass",
        r"decreased translucency",
        r"peribronchial (?:thickening|cuffing)",
        r"bronchial wall thickening",
        r"parenchymal scar",
        r"scar",
    ),
    "Lung Lesion": words(
        r"mass\b",
        r"masses\b",
        r"nodul",
        r"nodular (?:density|densities|opaci)",
        r"lump",
        r"cavitary (?:lesion|mass)",
        r"cavitation",
        r"carcinoma",
        r"neoplasm",
        r"tumou?r",
        r"malignan",
        r"lung lesion",
        r"pulmonary lesion",
    ),
    "Edema": words(
        r"edema",
        r"oedema",
        r"heart failure",
        r"chf\b",
        r"(?:vascular|venous|pulmonary|interstitial|perihilar) congestion",
        r"congestive",
        r"fluid overload",
        r"kerley",
        r"vascular (?:prominence|indistinctness|engorgement|redistribution|cephalization)",
        r"cephalization",
    ),
    "Consolidation": words(r"consolidat"),
    "Pneumonia": words(r"pneumonia", r"bronchopneumonia", r"pneumonitis", r"infection", r"infectious"),
    "Atelectasis": words(r"atelecta", r"collapse"),
    "Pneumothorax": words(r"pneumothora", r"hydropneumothora", r"pleural air\b"),
    "Pleural Effusion": words(r"effusion", r"pleural fluid", r"hydrothorax", r"fluid in the (?:pleural|fissure)"),
    "Pleural Other": words(
        r"pleural (?:thickening|plaque|calcification|scar|fibrosis|reaction)",
        r"pleural[- ]parenchymal (?:scar|thickening|opaci)",
        r"pleuroparenchymal (?:scar|thickening|opaci)",
        r"pleuro-pericardial scar",
        r"fibrothorax",
        r"apical (?:pleural )?(?:cap|capping|thickening)",
    ),
    "Fracture": words(r"fractur", r"fx\b"),
    "Support Devices": words(
        r"pacer",
        r"pacemaker",
        r"pacing (?:lead|wire|device)",
        r"(?:defibrillator|icd|aicd)\b",
        r"(?:picc|central|venous|jugular|subclavian|arterial|dialysis|swan|pic|ij|port|catheter) lines?\b",
        r"lines? (?:tip|terminat|in place)",
        r"(?:endotracheal|et|nasogastric|ng|og|orogastric|feeding|chest|tracheostomy|enteric|gastrostomy|"
        r"thoracostomy|dobhoff|drainage) tubes?",
        r"tubes?\b",
        r"catheter",
        r"port-?a-?cath",
        r"(?:chest|venous|infusion|power|subcutaneous) port",
        r"mediport",
        r"(?:prosthetic|replacement|mechanical|artificial|bioprosthetic) (?:aortic |mitral )?valve",
        r"valve (?:replacement|prosthesis)",
        r"hardware",
        r"arthroplast",
        r"prosthes[ie]s",
        r"(?:sternotomy|sternal|surgical|cerclage) (?:wires?|sutures?|clips?|staples?)",
        r"(?:surgical|vascular|aneurysm) clips?",
        r"clips?\b",
        r"staples?\b",
        r"stents?\b",
        r"device",
        r"(?:orthopedic|fixation|surgical|metallic|compression) (?:plates?|screws?|rods?)",
        r"(?:plates?|screws?|rods?) and (?:plates?|screws?|rods?)",
        r"screws?\b",
        r"fixation",
        r"(?:pacer|pacemaker|pacing|icd|aicd|defibrillator|transvenous|epicardial|cardiac) (?:leads?|wires?)",
        r"leads?\b(?= (?:terminat|tip|in|project|overl|extend))",
        r"(?:monitoring|ekg|ecg) (?:leads|wires|electrodes|devices)",
        r"electrodes?",
        r"cannula",
        r"(?:embolization )?coils?\b",
        r"drains?\b",
        r"apparatus",
        r"equipment",
        r"implant",
        r"tracheostomy",
        r"(?:nipple|skin) markers?",
        r"vagal nerve stimulator",
        r"loop recorder",
    ),
}

#: Unmentions: a finding match overlapping one of these is dropped (e.g. "pericardial effusion").
UNMENTIONS: dict[str, re.Pattern[str]] = {
    "Pleural Effusion": words(r"pericardial effusion", r"joint effusion"),
    "Lung Lesion": words(
        r"calcified (?:\w+ )?nodul",
        r"nodul\w* calcifi",
        r"massive",
        r"mass effect",
        r"(?:soft tissue|breast|neck|thyroid|abdominal|mediastinal|hilar|paratracheal|chest wall) mass",
    ),
    "Lung Opacity": words(r"pleural[- ]?(?:parenchymal )?scar", r"pleuroparenchymal scar", r"surgical scar"),
    "Atelectasis": words(
        r"(?:vertebral|vertebra|vertebrae|body|bodies|compression|spine|spinal|disc|disk) (?:\w+ ){0,2}collapse",
        r"collapse of (?:the )?(?:\w+ )?(?:vertebra|vertebral|body|bodies|t\d+|l\d+)",
    ),
    "Pneumonia": words(
        r"infection control",
        r"(?:granulomatous|tuberculo\w*|prior|old|previous|remote|healed) (?:\w+ )?infection",
    ),
}

#: Attribute mentions (see the module docstring).
ATTRIBUTES: dict[str, Attribute] = {
    "Cardiomegaly": Attribute(
        subject=words(
            r"heart(?! failure)(?:\s+(?:size|silhouette|shadow|contours?|borders?))?\b",
            r"cardiac (?:size|silhouette|shadow|contours?|diameter|borders?|dimensions?)\b",
            r"cardiothoracic ratio",
        ),
        abnormal=words(r"enlarg", r"large\b", r"increase", r"prominen", r"borderline", r"globular", r"big\b"),
        normal=_NORMAL_SIZE,
    ),
    "Enlarged Cardiomediastinum": Attribute(
        subject=words(
            r"cardiomediastin(?:al|um)(?: (?:silhouette|contours?|shadow|size|width|structures))?\b",
            r"mediastin(?:um|al)(?: (?:silhouette|contours?|shadow|size|width|structures|configuration))?\b",
            r"pericardial silhouette",
        ),
        abnormal=words(r"enlarg", r"widen", r"wide\b", r"large\b", r"increased", r"prominen", r"bulg"),
        normal=_NORMAL_SIZE,
    ),
    "Edema": Attribute(
        subject=words(
            r"(?:pulmonary |lung |central |hilar |perihilar )*(?:vascularity|vasculature|vascular markings|vessels)\b",
            r"vascular margination",
        ),
        abnormal=words(
            r"prominen",
            r"accentuat",
            r"increase",
            r"engorg",
            r"indistinct",
            r"congest",
            r"cephaliz",
            r"redistribut",
            r"plethor",
        ),
        normal=words(r"normal\b", r"within (?:the )?normal", r"unremarkable", r"within (?:the )?limits of normal"),
        words_after=5,
    ),
}

#: Attribute subjects that are positional, not the structure's own state ("opacity behind the heart").
ATTRIBUTE_UNMENTIONS: dict[str, re.Pattern[str]] = {
    "Cardiomegaly": words(
        r"(?:over|overlying|behind|through|obscuring|obscures|in|within|adjacent to|along|beneath|below|above|"
        r"at|near|projecting over|projects over|overlies|overlie|left|right|superior|inferior) (?:the )?"
        r"(?:left |right |superior |inferior )?heart",
        r"heart (?:border|borders)\b(?! (?:is|are) (?:enlarg|promin))",
    ),
    "Enlarged Cardiomediastinum": words(
        r"mediastinal (?:lymph|nodes?|adenopathy|lymphadenopathy|calcifi|granulom|shift|air|fat)",
        r"(?:in|within|into|of|over|superior) (?:the )?(?:superior |anterior |posterior )?mediastinum",
        r"pneumomediastin",
    ),
}

# ---------------------------------------------------------------------------------------------------------------
# Findings outside the 14 observations: they block "No Finding" when positive or uncertain
# ---------------------------------------------------------------------------------------------------------------

OTHER_FINDINGS: re.Pattern[str] = words(
    r"emphysema",
    r"copd\b",
    r"chronic obstructive",
    r"hyperinflat",
    r"hyperexpan",
    r"hyperlucen",
    r"overinflat",
    r"blunt",
    r"granulom",
    r"calcifi",
    r"calcinosis",
    r"scolio",
    r"kyphos",
    r"kyphotic",
    r"degenerat",
    r"spondyl",
    r"osteophyt",
    r"osteopen",
    r"osteoporo",
    r"arthrit",
    r"arthropathy",
    r"eventration",
    r"elevat",
    r"hernia",
    r"bullae",
    r"bullous",
    r"bleb",
    r"fibrosis",
    r"fibrotic",
    r"bronchiectasis",
    r"thickening",
    r"cuffing",
    r"plaque",
    r"atherosclero",
    r"tortuos",
    r"ectasia",
    r"ectatic",
    r"aneurysm",
    r"unfold",
    r"deformit",
    r"volume loss",
    r"low (?:lung )?volume",
    r"hypoinflat",
    r"hypoexpan",
    r"pneumomediastin",
    r"pneumoperitoneum",
    r"hematoma",
    r"hemorrhage",
    r"contusion",
    r"aspiration",
    r"metasta",
    r"sarcoid",
    r"tuberculosis",
    r"cyst",
    r"lucency",
    r"inflam",
    r"bronchitis",
    r"bronchiolitis",
    r"airways? disease",
    r"asthma",
    r"hypertension",
    r"prominen",
    r"density",
    r"densities",
    r"radiopaque",
    r"bullet",
    r"foreign bod",
    r"osteodystrophy",
    r"thoracentesis",
    r"reticula",
    r"interstitial markings",
    r"adenopathy",
    r"lymphadenopathy",
    r"shift",
    r"dilat",
    r"enlarged",
    r"opacity",
    r"abnormalit",
    r"sclerosis",
    r"sclerotic",
    r"lesion",
    r"fluid",
    r"sternotomy",
    r"post[- ]?surgical",
    r"postoperative",
    r"resect",
    r"lobectomy",
    r"pneumonectomy",
    r"mastectomy",
    r"cholecystectomy",
)

# ---------------------------------------------------------------------------------------------------------------
# Negation and uncertainty cues. "pre" cues stand before the mention in its clause, "post" cues a few words after it.
# ---------------------------------------------------------------------------------------------------------------

#: Pseudo-negations: look like a negation but negate nothing ("no change in the effusion"). Blanked out first.
PSEUDO_NEGATION = words(
    r"(?:no|without) (?:(?:significant|appreciable|interval|substantial|definite|acute|major|other|further) )*"
    r"(?:change|increase|worsening|progression)",
    r"not (?:significantly |appreciably )?(?:changed|increased|worsened|only)",
    r"gram[- ]negative",
)

#: Uncertainty that wins over negation: "cannot exclude X", "no new X" (CheXpert's pre-negation uncertainty).
UNCERTAIN_BEFORE_NEGATION_PRE = words(
    r"(?:cannot|can not|can't|could not|couldn't|not) (?:\w+ly )?(?:be )?(?:\w+ly )?(?:excluded?|ruled? out|rule out)",
    r"(?:difficult|hard|impossible) to (?:\w+ly )?(?:exclude|rule out)",
    r"no evidence to rule out",
    r"no new\b",
    r"not (?:\w+ )?(?:certain|sure|definite)",
)
#: Words that make the words before them a clause of their own: in "effusion is seen at the base and consolidation
#: cannot be excluded" the effusion is not uncertain.
_PREDICATE = (
    r"(?:is|are|was|were|be|been|has|have|had|seen|noted|present|identified|demonstrated|shows?|appears?|remains?|"
    r"persists?|represents?|suggests?)\b"
)
#: "X ... cannot be excluded": like CheXpert's dependency rule, which takes the whole subject of "excluded" (not
#: only its head word), the cue reaches back over the clause -- up to :data:`POST_SCOPE_WORDS` words, none of them a
#: predicate of its own (:data:`_PREDICATE`).
POST_SCOPE_WORDS = 10
UNCERTAIN_BEFORE_NEGATION_POST = re.compile(
    rf"^[^\w,]*(?:(?!{_PREDICATE})\w+[^\w,]+){{0,{POST_SCOPE_WORDS}}}?(?:"
    r"(?:is |are |was |were |has |have )?(?:cannot|can not|can't|could not|couldn't|not) (?:\w+ly )?(?:be |been )?"
    r"(?:\w+ly )?(?:excluded|ruled out)|"
    r"(?:is |are |was |were )?(?:difficult|hard|impossible) to (?:\w+ly )?(?:exclude|rule out)"
    r")"
)

NEGATION_PRE = words(
    r"no\b",
    r"not\b",
    r"without\b",
    r"negative for",
    r"free of",
    r"clear of",
    r"absence of",
    r"absent\b",
    r"resolution of",
    r"resolved\b",
    r"removal of",
    r"rather than",
    r"ruled out",
    r"neither\b",
    r"nor\b",
    r"never\b",
    r"non-?(?=enlarged)",
)
NEGATION_POST = re.compile(
    r"^[^\w,]*(?:\w+[^\w,]+){0,6}?(?:"
    r"(?:is |are |was |were |has |have )?(?:not|no longer) (?:\w+ )?(?:seen|identified|visualized|visible|present|"
    r"appreciated|demonstrated|evident|noted|detected|apparent|observed|shown|enlarged|widened)\b|"
    r"(?:has |have )?(?:resolved|cleared|been removed|disappeared)\b|"
    r"(?:is |are |was |were )?(?:absent|removed)\b|"
    r"(?:is |are )?negative\b|"
    r"(?:appears? |is |are )?within (?:the )?(?:normal limits|limits of normal)"
    r")"
)

UNCERTAINTY_PRE = words(
    r"may\b",
    r"might\b",
    r"could\b",
    r"possib",
    r"probab",
    r"likely",
    r"suspicio",
    r"suspect",
    r"concern(?:ing)? for",
    r"worrisome",
    r"question",
    r"suggest",
    r"consider(?!ing)",
    r"differential",
    r"versus\b",
    r"vs\b",
    r"presum",
    r"favou?r",
    r"equivocal",
    r"indeterminate",
    r"uncertain",
    r"raises? the possibility",
    r"cannot be excluded",
    r"(?:evaluat\w*|assess\w*) for",
    r"rule out",
    r"\?",
)
UNCERTAINTY_POST = re.compile(
    r"^[^\w,]*(?:(?:\w+[^\w,]+){0,4}?(?:is |are |was |were |be )?(?:also )?(?:possible|possibly|likely present|suspected|"
    r"questioned|questionable|considered|a consideration|favored|not excluded)\b|"
    r"(?:\w+[^\w,]+){0,2}?(?:versus|vs)\b|"
    r"\?)"
)

#: "chf" / "heart failure" positive or uncertain makes Cardiomegaly uncertain when it is otherwise blank (CheXpert).
HEART_FAILURE = words(r"chf\b", r"heart failure", r"congestive")
