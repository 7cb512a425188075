"""Chat exchanges whose answers are correct by construction.

Every answer is computed by the generator (arithmetic, unit conversions, string operations,
calendar facts) or read from a small built-in table of stable facts, never written by hand per
question. ``qa(rng, zh)`` returns one (question, answer) pair.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable

from stages.synthetic.values import WORDS

CAPITALS = [
    ("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"), ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Peru", "Lima", "秘鲁", "利马"), ("Norway", "Oslo", "挪威", "奥斯陆"), ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Egypt", "Cairo", "埃及", "开罗"), ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("Germany", "Berlin", "德国", "柏林"), ("India", "New Delhi", "印度", "新德里"),
    ("Spain", "Madrid", "西班牙", "马德里"), ("South Korea", "Seoul", "韩国", "首尔"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"), ("Brazil", "Brasília", "巴西", "巴西利亚"),
    ("Argentina", "Buenos Aires", "阿根廷", "布宜诺斯艾利斯"), ("Italy", "Rome", "意大利", "罗马"),
    ("Vietnam", "Hanoi", "越南", "河内"), ("Ecuador", "Quito", "厄瓜多尔", "基多"),
    ("Ireland", "Dublin", "爱尔兰", "都柏林"), ("Mexico", "Mexico City", "墨西哥", "墨西哥城"),
]
ELEMENTS = [("hydrogen", "H", 1), ("helium", "He", 2), ("lithium", "Li", 3), ("carbon", "C", 6),
            ("nitrogen", "N", 7), ("oxygen", "O", 8), ("sodium", "Na", 11), ("potassium", "K", 19),
            ("calcium", "Ca", 20), ("iron", "Fe", 26), ("copper", "Cu", 29), ("zinc", "Zn", 30),
            ("silver", "Ag", 47), ("gold", "Au", 79), ("lead", "Pb", 82)]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKDAYS_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
# (from, singular, to, factor) — factors are exact definitions or standard 6-digit values.
CONVERSIONS = [("kilometres", "kilometre", "miles", 0.621371), ("miles", "mile", "kilometres", 1.609344),
               ("kilograms", "kilogram", "pounds", 2.204623), ("pounds", "pound", "kilograms", 0.453592),
               ("inches", "inch", "centimetres", 2.54), ("litres", "litre", "US gallons", 0.264172),
               ("metres", "metre", "feet", 3.28084)]
ITEMS = [("apples", "苹果"), ("books", "本书"), ("tickets", "张票"), ("boxes", "个箱子"), ("plants", "盆植物")]

QA = tuple[str, str]


def _arith(rng: random.Random, zh: bool) -> QA:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*", "/"])
    if op == "/":
        a = a * b  # keep division exact so the answer is an integer
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    shown = {"*": "×", "/": "÷"}.get(op, op)
    if zh:
        return f"{a} {shown} {b} 等于多少？", f"{a} {shown} {b} = {value}。"
    return f"What is {a} {shown} {b}?", f"{a} {shown} {b} = {value}."


def _word_problem(rng: random.Random, zh: bool) -> QA:
    per_day, weeks = rng.randint(3, 60), rng.randint(2, 9)
    en, zh_item = rng.choice(ITEMS)
    total = per_day * weeks * 7
    if zh:
        return (f"一家店每天卖出{per_day}{zh_item}，{weeks}周一共卖出多少？请写出过程。",
                f"{weeks}周共有{weeks} × 7 = {weeks * 7}天，所以一共卖出{per_day} × {weeks * 7} = {total}{zh_item}。")
    return (f"A shop sells {per_day} {en} every day. How many {en} does it sell in {weeks} weeks? Show your steps.",
            f"{weeks} weeks have {weeks} × 7 = {weeks * 7} days, so the shop sells {per_day} × {weeks * 7} = "
            f"{total} {en}.")


def _convert(rng: random.Random, zh: bool) -> QA:
    src, one, dst, factor = rng.choice(CONVERSIONS)
    amount = rng.randint(2, 500)
    return (f"Convert {amount} {src} to {dst}.",
            f"One {one} is {factor} {dst}, so {amount} {src} ≈ {amount * factor:.2f} {dst}.")


def _temperature(rng: random.Random, zh: bool) -> QA:
    c = rng.randint(-30, 45)
    f = c * 9 / 5 + 32
    if zh:
        return f"{c}摄氏度等于多少华氏度？", f"华氏度 = 摄氏度 × 9/5 + 32，所以{c}°C = {f:g}°F。"
    return f"What is {c} °C in Fahrenheit?", f"°F = °C × 9/5 + 32, so {c} °C = {f:g} °F."


def _string_op(rng: random.Random, zh: bool) -> QA:
    word = rng.choice(WORDS) + rng.choice(WORDS)
    op = rng.randrange(4)
    if op == 0:
        return f'Reverse the string "{word}".', f'The reversed string is "{word[::-1]}".'
    if op == 1:
        return f'Write "{word}" in upper case.', f'"{word.upper()}"'
    if op == 2:
        n = sum(ch in "aeiou" for ch in word)
        return f'How many vowels are in "{word}"?', f'"{word}" contains {n} vowel{"s" if n != 1 else ""}.'
    words = rng.sample(WORDS, 4)
    return (f"Sort these words alphabetically: {', '.join(words)}.",
            f"In alphabetical order: {', '.join(sorted(words))}.")


def _date_fact(rng: random.Random, zh: bool) -> QA:
    day = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 30))
    op = rng.randrange(3)
    if op == 0:
        wd = day.weekday()
        if zh:
            return f"{day.isoformat()}是星期几？", f"{day.isoformat()}是{WEEKDAYS_ZH[wd]}。"
        return f"What day of the week was {day.isoformat()}?", f"{day.isoformat()} was a {WEEKDAYS[wd]}."
    if op == 1:
        n = rng.randint(1, 400)
        later = day + dt.timedelta(days=n)
        if zh:
            return f"{day.isoformat()}之后{n}天是哪一天？", f"{day.isoformat()}之后{n}天是{later.isoformat()}。"
        return (f"What date is {n} days after {day.isoformat()}?",
                f"{n} days after {day.isoformat()} is {later.isoformat()}.")
    year = day.year + rng.randint(-100, 100)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    why = ("divisible by 400" if year % 400 == 0 else "divisible by 100 but not by 400" if year % 100 == 0
           else "divisible by 4" if year % 4 == 0 else "not divisible by 4")
    if zh:
        return f"{year}年是闰年吗？", f"{year}年{'是' if leap else '不是'}闰年。"
    return (f"Is {year} a leap year?",
            f"{'Yes' if leap else 'No'}: {year} is {why}, so it is {'' if leap else 'not '}a leap year.")


def _fact(rng: random.Random, zh: bool) -> QA:
    kind = rng.randrange(3)
    if kind == 0 or zh:
        country, capital, country_zh, capital_zh = rng.choice(CAPITALS)
        if zh:
            return f"{country_zh}的首都是哪里？", f"{country_zh}的首都是{capital_zh}。"
        return f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    if kind == 1:
        name, symbol, number = rng.choice(ELEMENTS)
        return (f"What is the chemical symbol of {name}?",
                f"The chemical symbol of {name} is {symbol}; its atomic number is {number}.")
    i = rng.randrange(len(PLANETS))
    return (f"Which planet is the {ORDINALS[i]} from the Sun?",
            f"{PLANETS[i]} is the {ORDINALS[i]} planet from the Sun.")


def _gcd(rng: random.Random, zh: bool) -> QA:
    a, b = rng.randint(6, 400), rng.randint(6, 400)
    if zh:
        return f"{a}和{b}的最大公约数是多少？", f"{a}和{b}的最大公约数是{math.gcd(a, b)}。"
    return (f"What is the greatest common divisor of {a} and {b}?",
            f"The greatest common divisor of {a} and {b} is {math.gcd(a, b)}.")


_SMALL_TALK = [
    ("Hi!", "Hello! How can I help you today?"),
    ("Hello there", "Hi! What can I do for you?"),
    ("Good morning!", "Good morning! How can I help?"),
    ("Thanks, that's all.", "You're welcome! Let me know if you need anything else."),
    ("Thank you so much!", "Glad I could help!"),
    ("How are you?", "I'm doing well, thanks for asking. What can I help you with?"),
    ("Who are you?", "I'm an AI assistant. I can answer questions and use the tools I've been given."),
    ("Can you keep a secret?", "I don't keep memories between conversations, so anything you tell me stays here."),
    ("ok", "Alright. Is there anything else you'd like me to do?"),
    ("Never mind.", "No problem. I'm here if you need anything."),
]
_SMALL_TALK_ZH = [
    ("你好！", "你好！有什么可以帮你的吗？"),
    ("谢谢！", "不客气！还有其他需要帮忙的吗？"),
    ("你是谁？", "我是一个AI助手，可以回答问题，也可以使用提供给我的工具。"),
    ("早上好", "早上好！今天有什么可以帮你的？"),
]


def _small_talk(rng: random.Random, zh: bool) -> QA:
    return rng.choice(_SMALL_TALK_ZH if zh else _SMALL_TALK)


# Generators with a Chinese form; the others are English only.
_BOTH: list[Callable[[random.Random, bool], QA]] = [_arith, _word_problem, _temperature, _date_fact, _fact, _gcd]
_EN_ONLY: list[Callable[[random.Random, bool], QA]] = [_convert, _string_op]


def qa(rng: random.Random, zh: bool = False) -> QA:
    """A question and its answer; one in six is small talk (greetings, thanks), which people also
    send to an assistant that has tools."""
    if rng.random() < 1 / 6:
        return _small_talk(rng, zh)
    return topical_qa(rng, zh)[1]


def topical_qa(rng: random.Random, zh: bool = False) -> tuple[str, QA]:
    """Like :func:`qa`, also naming the generator (used as a source/category label)."""
    gens = _BOTH if zh else _BOTH + _EN_ONLY + _EN_ONLY
    gen = rng.choice(gens)
    return gen.__name__.strip("_"), gen(rng, zh)
