"""`numeric`: one number, with an optional medical unit, within a tolerance of the reference.

Reading an answer (after :func:`~medverl.rewards.text.normalize`: NFKC, case-fold, collapsed whitespace):

* Numbers: ``12``, ``12.5``, ``-3``, ``+3``, ``.45``, ``1,000.5`` (comma thousands groups), ``1.2e3``; a fraction
  ``1/2`` (a number, a slash, an unsigned integer, no unit after either) is a ratio (0.5). Any other comma
  (``5,6``, ``12,5``) separates numbers. The number may sit in a short sentence: ``"The nodule measures about 12 mm."``.
* Units, right after the number (``12mm``, ``12 mm``, ``12-mm``): length ``μm um mm cm m`` (and their names,
  毫米 厘米 公分), percent ``% percent``, pressure ``mmHg`` (毫米汞柱), ``cmH2O`` (a unit of its own: it does not
  convert to mmHg), angle ``° deg degrees``. Other unit symbols (``mg``, ``ml``, ``cm2``, ``years``, ``kPa``, ...)
  are read as units of no supported dimension, so they never match; a word that is no unit (``12 nodules``) is text.
* Exactly one number: an answer holding two different numbers (``5 mm or 6 mm``, ``between 5 and 6 mm``,
  ``120/80 mmHg``, ``12x10 mm``) is a hedge and scores 0. The same quantity written twice (``12 mm (1.2 cm)``)
  counts once. At most ``MAX_NUMBERS`` numbers and ``MAX_DIGITS`` digits per number are read, from answers of at
  most ``MAX_ANSWER_CHARS`` characters (a longer one scores 0 unread).

Comparing (the reference's unit, or ``meta.unit``, is the *working unit*):

* The working unit sets the dimension: an answer in another unit of that dimension is converted (1.2 cm = 12 mm,
  45 % = 0.45 of a ratio); an answer in a unit of another dimension scores 0; an answer without a unit is read in
  the working unit (``45`` against ``45%`` is 45 %; ``0.45`` against ``45%`` is 0.45 % unless ``meta.accept_ratio``).
* A reference without a unit (and no ``meta.unit``) leaves the unit to the question: the answer's number is compared
  as written whatever its unit, and an answer in percent also matches as a ratio (``52%`` matches ``0.52``, and
  ``45%`` matches ``45``). Write the unit in the reference, or set ``meta.unit``, to have units checked.
* Tolerance (in the working unit): right when ``|answer - reference| <= max(abs_tol, rel_tol * |reference|)``.
  Default ``abs_tol = rel_tol = 0``: numerically equal. Arithmetic is decimal, so ``1.2 cm`` equals ``12 mm`` and
  ``1.3`` is within 0.1 of ``1.2`` exactly.

Row parameters (``extra_info.meta``): ``abs_tol`` and ``rel_tol`` (numbers >= 0), ``unit`` (a unit above, or
``"ratio"`` for a unitless fraction), ``accept_ratio`` (true: against a percent reference, a unitless answer also
counts as a ratio, so ``0.45`` matches ``45%``).
"""

from __future__ import annotations

import decimal
import functools
import math
import re
from decimal import Decimal
from typing import NamedTuple

from medverl.rewards.meta import parsed_per_meta, row_meta
from medverl.rewards.registry import InvalidReference, Verdict, register
from medverl.rewards.text import normalize

MAX_ANSWER_CHARS = 2048  # a number in a short sentence; longer answers score 0 before any parsing (bounded time)
MAX_DIGITS = 64  # digits of one number (mantissa); a longer run of digits is no measurement
MAX_EXPONENT_DIGITS = 6  # 1e999999 is read (and is not finite); longer exponents are not
MAX_NUMBERS = 16  # numbers read from one answer (repeats of one quantity included)
MAX_MAGNITUDE = 308  # decimal exponent beyond which a number is not a finite double


class Unit(NamedTuple):
    """A unit: its canonical `symbol` ("" for a ratio), its `dimension`, and its `factor` in the dimension's base
    unit (mm for lengths, a ratio for percent)."""

    symbol: str
    dimension: str
    factor: Decimal = Decimal(1)

    def describe(self) -> str:
        """How reasons name it: 'unit mm', 'a ratio'."""
        return f"unit {self.symbol}" if self.symbol else "a ratio"


MM = Unit("mm", "length")
PERCENT = Unit("%", "fraction", Decimal("0.01"))
RATIO = Unit("", "fraction")
MMHG = Unit("mmHg", "pressure")
_UM = Unit("μm", "length", Decimal("0.001"))
_CM = Unit("cm", "length", Decimal(10))
_M = Unit("m", "length", Decimal(1000))
_CMH2O = Unit("cmH2O", "water pressure")
_DEGREE = Unit("°", "angle")

# Spellings (normalised, spaces removed) of the supported units.
UNITS: dict[str, Unit] = {
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres", "毫米"), MM),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres", "厘米", "公分"), _CM),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), _M),
    **dict.fromkeys(("μm", "um", "micrometer", "micrometers", "micrometre", "micrometres", "micron", "microns"), _UM),
    **dict.fromkeys(("%", "percent", "pct"), PERCENT),
    **dict.fromkeys(("mmhg", "毫米汞柱"), MMHG),
    **dict.fromkeys(("cmh2o",), _CMH2O),
    **dict.fromkeys(("°", "deg", "degree", "degrees"), _DEGREE),
}
# Unit symbols of dimensions this reward does not convert: an answer in them is in the wrong dimension (never read
# as a bare number in the reference's unit).
OTHER_UNITS = frozenset((
    "mm2 mm3 cm2 cm3 m2 m3 ml l cc mg g kg ug μg mcg mmol mol meq iu s ms sec secs min mins h hr hrs hour hours day "
    "days week weeks month months year years yr yrs bpm hz khz mhz kpa pa hu gy cgy sv msv mgy mbq kev kv kvp mas "
    "°c °f kcal"
).split())

# A number not glued to a preceding letter, digit or dot ("T2", "HER2", "β2" and "v1.2" hold none), except after
# an "x" of dimensions ("12x10"). CJK characters may precede it ("约12毫米"). Linear: no nested quantifiers, and
# nothing after the optional parts forces backtracking.
_NOT_WORD = "0-9a-z_.\u00b5\u00df-\u00f6\u00f8-\u02af\u0370-\u03ff\u0400-\u04ff"
_NUMBER = re.compile(
    rf"(?:(?<![{_NOT_WORD}])|(?<=[0-9m]x))([+\-\u2212]?)([0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)(?:e([+\-\u2212]?[0-9]+))?"
)
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+")
# A unit right after a number: one optional space or hyphen, then a symbol or word.
_UNIT = re.compile(r"[ -]?(%|mm ?hg|cm ?h2o|per ?cent|毫米汞柱|毫米|厘米|公分|[a-z°μ]+(?:[23](?![0-9]))?)")
# The rest of a fraction after its numerator: "/2", " / 3".
_FRACTION = re.compile(rf" ?/ ?([0-9]{{1,{MAX_DIGITS}}})(?![0-9]|[.,][0-9])")
_NOT_FINITE = re.compile(r"(?<![a-z])(?:inf(?:inity)?|nan)(?![a-z])|∞")

# Exact decimal arithmetic for at most MAX_DIGITS-digit numbers within MAX_MAGNITUDE (and tolerances): no trap fires.
_CTX = decimal.Context(prec=2 * MAX_DIGITS + 8, Emax=999_999, Emin=-999_999)


class Quantity(NamedTuple):
    """A number and the unit written after it (None: no unit)."""

    value: Decimal
    unit: Unit | None = None

    def __str__(self) -> str:
        number = format_number(self.value)
        return f"{number} {self.unit.symbol}" if self.unit is not None and self.unit.symbol else number

    def base(self) -> Decimal:
        """The value in the dimension's base unit (a number without a unit is its own base)."""
        return self.value if self.unit is None else _CTX.multiply(self.value, self.unit.factor)


class Reading(NamedTuple):
    """What :func:`read_quantity` read: the `quantity`, or the `reason` there is none."""

    quantity: Quantity | None = None
    reason: str = ""


class Settings(NamedTuple):
    """The numeric parameters of a row's meta (see the module docstring)."""

    abs_tol: Decimal = Decimal(0)
    rel_tol: Decimal = Decimal(0)
    unit: Unit | None = None
    accept_ratio: bool = False


def format_number(value: Decimal) -> str:
    """The shortest float spelling of `value`, without a trailing ``.0``.

    >>> format_number(Decimal("12.0")), format_number(Decimal("0.45")), format_number(Decimal("-0"))
    ('12', '0.45', '0')
    """
    number = float(value)
    if number == 0:
        return "0"
    text = repr(number)
    return text[:-2] if text.endswith(".0") else text


def _prepare(text: str) -> str:
    """:func:`normalize` `text`, keeping a leading dot (normalize strips it as edge punctuation: ".45" is not 45)."""
    return normalize("#" + text)[1:].strip()


def read_quantity(text: str) -> Reading:
    """The one quantity in `text` (a number with an optional unit), or why there is none.

    >>> str(read_quantity("The nodule measures about 12 mm.").quantity)
    '12 mm'
    >>> str(read_quantity("1,000.5").quantity), str(read_quantity("45 %").quantity)
    ('1000.5', '45 %')
    >>> read_quantity("5 mm or 6 mm").reason
    'more than one number: 5 mm and 6 mm'
    >>> read_quantity("NaN").reason
    'not finite'
    """
    if len(text) > MAX_ANSWER_CHARS:
        return Reading(reason=f"answer longer than {MAX_ANSWER_CHARS} characters")
    text = _prepare(text)
    found: Quantity | None = None
    pos = 0
    for count in range(MAX_NUMBERS + 1):
        match = _NUMBER.search(text, pos)
        if match is None:
            break
        if count == MAX_NUMBERS:
            return Reading(reason=f"more than {MAX_NUMBERS} numbers")
        quantity, reason, pos = _read_match(text, match)
        if quantity is None:
            return Reading(reason=reason)
        if found is None:
            found = quantity
            continue
        same = _same_quantity(found, quantity)
        if same is None:
            return Reading(reason=f"more than one number: {found} and {quantity}")
        found = same
    if found is None:
        return Reading(reason="not finite" if _NOT_FINITE.search(text) else "no number")
    return Reading(found)


def _read_match(text: str, match: re.Match[str]) -> tuple[Quantity | None, str, int]:
    """The quantity a `_NUMBER` match starts, the reason it is none, and where reading goes on."""
    sign, mantissa, exponent = match.groups()
    end = match.end()
    integer, _, fraction = mantissa.partition(".")
    if exponent is None and not fraction and integer.endswith(","):  # "12, 13": the comma ends the number
        end -= len(integer) - len(integer.rstrip(","))
        integer = integer.rstrip(",")
    if "," in integer:
        if not _THOUSANDS.fullmatch(integer):  # "5,6", "12,5": a list, or a decimal comma we cannot tell from one
            return None, "more than one number", end
        integer = integer.replace(",", "")
    if len(integer) + len(fraction) > MAX_DIGITS:
        return None, f"number longer than {MAX_DIGITS} digits", end
    if text.startswith(".", end) and text[end + 1:end + 2].isdigit():
        return None, "malformed number", end  # "1.2.3"
    if exponent is not None:
        exponent = exponent.replace("\u2212", "-")
        if len(exponent.lstrip("+-")) > MAX_EXPONENT_DIGITS:
            return None, "not finite" if not exponent.startswith("-") else "number out of range", match.end()
    negative = "-" if sign and sign != "+" else ""
    value = Decimal(f"{negative}{integer}.{fraction}e{exponent or 0}".replace(".e", "e"))
    if value.adjusted() > MAX_MAGNITUDE:
        return None, "not finite", end
    if value and value.adjusted() < -MAX_MAGNITUDE:
        return None, "number out of range", end
    unit, unit_end = _unit_at(text, end)
    if unit is None and exponent is None and (slash := _FRACTION.match(text, end)) is not None:
        if _unit_at(text, slash.end())[0] is None:  # "120/80 mmHg" is two numbers, "1/2" one ratio
            denominator = Decimal(slash.group(1))
            if not denominator:
                return None, "not finite", slash.end()
            return Quantity(_CTX.divide(value, denominator), RATIO), "", slash.end()
    return Quantity(value, unit), "", unit_end


def _unit_at(text: str, pos: int) -> tuple[Unit | None, int]:
    """The unit written at `pos` and where it ends; (None, pos) when the word there is no unit."""
    match = _UNIT.match(text, pos)
    if match is None:
        return None, pos
    word = match.group(1).replace(" ", "")
    if word == "percent":
        return PERCENT, match.end()
    unit = UNITS.get(word)
    if unit is not None:
        return unit, match.end()
    if word in OTHER_UNITS:
        return Unit(word, f"{word} (unsupported)"), match.end()
    return None, pos


def _same_quantity(a: Quantity, b: Quantity) -> Quantity | None:
    """One quantity written twice ("12 mm (1.2 cm)", "45% (0.45)"): the more specific of the two, else None."""
    if a.unit is None or b.unit is None:
        if a.value == b.value or a.base() == b.base():
            return b if a.unit is None else a
        return None
    if a.unit.dimension == b.unit.dimension and a.base() == b.base():
        return a
    return None


def _unit_named(name: object) -> Unit:
    if not isinstance(name, str):
        raise InvalidReference(f"numeric meta.unit must be a unit name, got {name!r:.80}")
    key = normalize(name).replace(" ", "")
    unit = RATIO if key == "ratio" else UNITS.get(key)
    if unit is None:
        known = ", ".join(sorted({u.symbol for u in UNITS.values()}) + ["ratio"])
        raise InvalidReference(f"numeric meta.unit {name!r:.80} is not a known unit (known: {known})")
    return unit


def _tolerance(values: dict, key: str) -> Decimal:
    value = values.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReference(f"numeric meta.{key} must be a number >= 0, got {value!r:.80}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite or value < 0:
        raise InvalidReference(f"numeric meta.{key} must be a finite number >= 0, got {value!r:.80}")
    return Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)


@parsed_per_meta
def numeric_settings(meta: object = None) -> Settings:
    """A row's numeric parameters; raises :class:`InvalidReference` for malformed ones.

    >>> settings = numeric_settings('{"abs_tol": 0.5, "unit": "cm"}')
    >>> settings.abs_tol, settings.rel_tol, settings.unit.symbol
    (Decimal('0.5'), Decimal('0'), 'cm')
    """
    values = row_meta(meta)
    for wrong in ("tolerance", "tol"):
        if wrong in values:
            raise InvalidReference(f"numeric meta has {wrong!r}: write 'abs_tol' (in the reference's unit) "
                                   "and/or 'rel_tol' (a fraction of the reference)")
    accept_ratio = values.get("accept_ratio", False)
    if not isinstance(accept_ratio, bool):
        raise InvalidReference(f"numeric meta.accept_ratio must be true or false, got {accept_ratio!r:.80}")
    unit = values.get("unit")
    return Settings(_tolerance(values, "abs_tol"), _tolerance(values, "rel_tol"),
                    None if unit is None else _unit_named(unit), accept_ratio)


@functools.lru_cache(maxsize=65536)
def gold_quantity(gold: str) -> Quantity:
    """A reference: exactly one finite number with at most a supported unit; raises :class:`InvalidReference`.

    >>> gold_quantity("1.2 cm")
    Quantity(value=Decimal('1.2'), unit=Unit(symbol='cm', dimension='length', factor=Decimal('10')))
    """
    text = _prepare(gold)
    match = _NUMBER.match(text)
    example = "write one number with an optional unit, e.g. '12 mm', '45%', '0.52'"
    if match is None:
        raise InvalidReference(f"numeric reference {gold[:80]!r} does not start with a number: {example}")
    quantity, reason, end = _read_match(text, match)
    if quantity is None:
        raise InvalidReference(f"numeric reference {gold[:80]!r}: {reason}")
    if end != len(text):
        raise InvalidReference(f"numeric reference {gold[:80]!r} is not one number with an optional unit: {example}")
    if quantity.unit is not None and quantity.unit.dimension.endswith("(unsupported)"):
        known = ", ".join(sorted({u.symbol for u in UNITS.values()}))
        raise InvalidReference(f"numeric reference {gold[:80]!r}: unit {quantity.unit.symbol} is not supported "
                               f"(known: {known})")
    return quantity


def _target(gold: str, settings: Settings) -> Quantity:
    """The reference in the working unit (``meta.unit``, else its own; None when neither names one)."""
    quantity = gold_quantity(gold)
    unit = settings.unit
    if unit is None or quantity.unit is unit:
        return quantity
    if quantity.unit is None:
        return Quantity(quantity.value, unit)
    if quantity.unit.dimension != unit.dimension:
        raise InvalidReference(f"numeric reference {gold[:80]!r} is in {quantity.unit.describe()}, which does not "
                               f"convert to meta.unit {unit.symbol or 'ratio'!r}")
    return Quantity(_CTX.divide(quantity.base(), unit.factor), unit)


def validate_numeric_reference(golds: tuple[str, ...], meta: object = None) -> None:
    """Raise :class:`InvalidReference` unless every reference is one finite number with at most a supported unit
    and meta's tolerances and unit are well-formed.

    >>> validate_numeric_reference(("12 mm", "1.2 cm"), '{"abs_tol": 0.5}')
    >>> validate_numeric_reference(("about 12",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medverl.rewards.registry.InvalidReference: numeric reference 'about 12' does not start with a number: ...
    """
    settings = numeric_settings(meta)
    for gold in golds:
        _target(gold, settings)


class _Outcome(NamedTuple):
    right: bool
    pred: str
    reason: str
    distance: Decimal | None  # None: not comparable (another dimension, not finite)


def _candidates(answer: Quantity, unit: Unit | None, settings: Settings) -> list[Quantity] | str:
    """The answer in the working `unit` (more than one reading where percent and ratio may both be meant), or why
    it does not convert."""
    if unit is None:  # a reference without a unit: the answer as written, and a percent also as a ratio
        if answer.unit is PERCENT:
            return [answer, Quantity(answer.base(), RATIO)]
        return [answer]
    if answer.unit is None:
        readings = [Quantity(answer.value, unit)]
        if settings.accept_ratio and unit is PERCENT:
            readings.append(Quantity(_CTX.multiply(answer.value, Decimal(100)), PERCENT))
        return readings
    if answer.unit.dimension != unit.dimension:
        return f"{answer.unit.describe()} where {unit.symbol or 'a ratio'} was expected"
    return [Quantity(_CTX.divide(answer.base(), unit.factor), unit)]


def _compare(answer: Quantity, target: Quantity, settings: Settings) -> _Outcome:
    candidates = _candidates(answer, target.unit, settings)
    if isinstance(candidates, str):
        return _Outcome(False, str(answer), candidates, None)
    tolerance = max(settings.abs_tol, _CTX.multiply(settings.rel_tol, _CTX.abs(target.value)))
    first: _Outcome | None = None
    for candidate in candidates:
        if candidate.value.adjusted() > MAX_MAGNITUDE:  # 1e308 m in mm
            outcome = _Outcome(False, str(answer), "not finite", None)
        else:
            distance = _CTX.abs(_CTX.subtract(candidate.value, target.value))
            if distance <= tolerance:
                return _Outcome(True, str(candidate), "", distance)
            outcome = _Outcome(False, str(candidate), f"{candidate} is {format_number(distance)} from {target} "
                                                      f"(tolerance {format_number(tolerance)})", distance)
        first = first or outcome
    return first or _Outcome(False, str(answer), "no reading", None)


@register("numeric", extra_info_keys=("meta",), validate=validate_numeric_reference, answer_type="closed")
def numeric(answer: str, golds: tuple[str, ...], meta: object = None) -> Verdict:
    """One number (optionally with a unit) within tolerance of a reference, converting units of one dimension.

    >>> numeric("The nodule measures 1.2 cm.", ("12 mm",))
    Verdict(acc=1.0, pred='12 mm', reason='')
    >>> numeric("12.8 mm", ("12 mm",), '{"abs_tol": 0.5}')
    Verdict(acc=0.0, pred='12.8 mm', reason='12.8 mm is 0.8 from 12 mm (tolerance 0.5)')
    >>> numeric("120 mmHg", ("120 mm",)).reason
    'unit mmHg where mm was expected'
    """
    settings = numeric_settings(meta)
    targets = [_target(gold, settings) for gold in golds]
    reading = read_quantity(answer)
    if reading.quantity is None:
        return Verdict(0.0, reason=reading.reason)
    best: _Outcome | None = None
    for target in targets:
        outcome = _compare(reading.quantity, target, settings)
        if outcome.right:
            return Verdict(1.0, pred=outcome.pred)
        if best is None or (outcome.distance is not None
                            and (best.distance is None or outcome.distance < best.distance)):
            best = outcome
    if best is None:
        return Verdict(0.0, reason="no reference")
    return Verdict(0.0, pred=best.pred, reason=best.reason)
