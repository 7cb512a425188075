"""A bank of invented functions, built compositionally from domain vocabularies.

Each function is (domain, verb, entity): its parameters come from the entity's parameter pool
(``values.P``) under verb-specific rules, its name from a naming style (snake_case, camelCase or
dotted), its result from the entity's result fields. The bank is fixed (its own seed), so a
function means the same thing in every row and every run; the data seed only chooses among them.
Nothing here is taken from any benchmark: the domains, entities and names are our own.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from stages.synthetic.values import CITIES, LANG_CODES, PEOPLE, TITLES, WORDS, WORDS_ZH, P, ParamSpec

BANK_SEED = 20261123

# verb -> (English description verb, English request phrase, Chinese request phrase)
VERBS: dict[str, tuple[str, str, str]] = {
    "get": ("Retrieves", "get", "获取"),
    "search": ("Searches for", "search for", "搜索"),
    "list": ("Lists", "list", "列出"),
    "create": ("Creates", "create", "创建"),
    "update": ("Updates", "update", "更新"),
    "cancel": ("Cancels", "cancel", "取消"),
    "check": ("Checks", "check", "查询"),
    "estimate": ("Estimates", "estimate", "估算"),
    "book": ("Books", "book", "预订"),
    "track": ("Tracks", "track", "跟踪"),
    "calculate": ("Calculates", "calculate", "计算"),
    "convert": ("Converts", "convert", "换算"),
}

# Result field kinds -> generator; the result of a call is built from the entity's fields.
def _result_value(kind: str, rng: random.Random, zh: bool) -> Any:
    if kind == "price":
        return round(rng.uniform(5, 900), 2)
    if kind == "count":
        return rng.randint(0, 500)
    if kind == "rating":
        return round(rng.uniform(1, 5), 1)
    if kind == "percent":
        return round(rng.uniform(0, 100), 1)
    if kind == "temp":
        return rng.randint(-10, 38)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "time":
        return f"{rng.randint(0, 23):02d}:{rng.choice(['00', '15', '30', '45'])}"
    if kind == "date":
        return f"{rng.randint(2024, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == "city":
        return rng.choice(CITIES)[1 if zh else 0]
    if kind == "person":
        return rng.choice(PEOPLE)[1 if zh else 0]
    if kind == "title":
        return rng.choice(TITLES)[1 if zh else 0]
    if kind == "word":
        return rng.choice(WORDS_ZH if zh else WORDS)
    if kind == "address":
        return (f"{rng.choice(CITIES)[1]}{rng.choice(WORDS_ZH)}路{rng.randint(1, 300)}号" if zh
                else f"{rng.randint(1, 300)} {rng.choice(WORDS).title()} Street")
    if kind == "condition":
        return rng.choice(["晴", "多云", "小雨", "雪"] if zh else ["sunny", "cloudy", "light rain", "snow"])
    if kind == "lang":
        return rng.choice(LANG_CODES)
    if kind == "level":
        return rng.choice(["偏低", "正常", "偏高"] if zh else ["low", "normal", "high"])
    if kind == "number":
        return round(rng.uniform(0, 1000), 2)
    if kind == "status":
        return rng.choice(["已发货", "处理中", "已送达"] if zh else ["shipped", "processing", "delivered"])
    raise ValueError(f"unknown result kind {kind}")


@dataclass(frozen=True)
class Entity:
    key: str  # snake_case words, e.g. "weather_forecast"
    en: str
    zh: str
    params: tuple[str, ...]  # keys into values.P; the first is the entity's natural key
    results: tuple[tuple[str, str], ...]  # (field name, result kind)
    verbs: tuple[str, ...] = ()  # verbs always offered for this entity (prefix families)


@dataclass(frozen=True)
class Domain:
    key: str
    en: str
    zh: str
    namespace: str  # for dotted names: Namespace.verbEntity
    entities: tuple[Entity, ...]


def _e(key: str, en: str, zh: str, params: str, results: str, verbs: str = "") -> Entity:
    res = tuple(tuple(r.split(":")) for r in results.split())
    return Entity(key, en, zh, tuple(params.split()), res, tuple(verbs.split()))  # type: ignore[arg-type]


DOMAINS: tuple[Domain, ...] = (
    Domain("weather", "Weather", "天气", "Weather", (
        _e("weather", "weather", "天气", "city units date",
           "temperature_c:temp condition:condition humidity:percent", "get"),
        _e("weather_forecast", "weather forecast", "天气预报", "city days units include_details",
           "high_c:temp low_c:temp condition:condition", "get"),
        _e("air_quality", "air quality", "空气质量", "city date coordinates", "aqi:count dominant_pollutant:word"),
    )),
    Domain("flights", "Air travel", "航班", "Flights", (
        _e("flight", "flight", "航班", "origin destination date cabin_class guests refundable_only",
           "flight_number:word price:price departure_time:time"),
        _e("boarding_pass", "boarding pass", "登机牌", "person_name date seat_numbers",
           "gate:count boarding_time:time"),
        _e("baggage_allowance", "baggage allowance", "行李额度", "cabin_class weight_kg", "allowed:bool fee:price"),
    )),
    Domain("hotels", "Lodging", "酒店", "Lodging", (
        _e("hotel", "hotel", "酒店", "city check_in check_out guests room_type amenities price_range",
           "hotel_name:title nightly_rate:price rating:rating"),
        _e("room_availability", "room availability", "房间空房情况", "city check_in check_out room_type",
           "available:bool rooms_left:count"),
        _e("hotel_review", "hotel review", "酒店评价", "title limit sort_order", "average_rating:rating reviews:count"),
    )),
    Domain("restaurants", "Dining", "餐饮", "Dining", (
        _e("restaurant", "restaurant", "餐厅", "city cuisine vegetarian price_range limit", "name:title rating:rating"),
        _e("table_reservation", "table reservation", "餐桌预订", "title date guests contact",
           "confirmation:word time:time"),
        _e("menu", "menu", "菜单", "title vegetarian language", "dishes:count cheapest:price"),
    )),
    Domain("stocks", "Stock market", "股票", "Stocks", (
        _e("stock_price", "stock price", "股价", "ticker currency", "price:price change_percent:percent", "get"),
        _e("stock_price_history", "stock price history", "股价历史", "ticker start_date end_date interval",
           "open:price close:price", "get"),
        _e("portfolio", "portfolio", "投资组合", "tickers currency include_details",
           "total_value:price positions:count"),
    )),
    Domain("banking", "Banking", "银行", "Banking", (
        _e("account_balance", "account balance", "账户余额", "person_name currency", "balance:price"),
        _e("transfer", "money transfer", "转账", "person_name amount currency notify", "reference:word fee:price"),
        _e("loan_payment", "loan payment", "贷款月供", "amount rate days", "monthly_payment:price"),
    )),
    Domain("shopping", "Online shopping", "网购", "Shop", (
        _e("product", "product", "商品", "product_name price_range sort_order limit",
           "price:price rating:rating stock:count"),
        _e("order", "order", "订单", "product_name quantity shipping size", "total:price status:status", "get"),
        _e("order_status", "order status", "订单状态", "product_name include_details", "status:status eta:date", "get"),
    )),
    Domain("music", "Music", "音乐", "Music", (
        _e("song", "song", "歌曲", "title genre year", "artist:person duration_seconds:count"),
        _e("playlist", "playlist", "歌单", "title genre tags", "tracks:count total_minutes:count"),
        _e("concert", "concert", "演唱会", "city start_date end_date genre", "headliner:person price:price"),
    )),
    Domain("movies", "Film", "电影", "Cinema", (
        _e("movie", "movie", "电影", "title year language", "director:person rating:rating"),
        _e("showtime", "showtime", "放映场次", "title city date", "time:time seats_left:count"),
        _e("movie_ticket", "movie ticket", "电影票", "title date seat_numbers", "price:price hall:count"),
    )),
    Domain("sports", "Sports", "体育", "Sports", (
        _e("match_score", "match score", "比赛比分", "team date", "home_score:count away_score:count"),
        _e("team_standings", "team standings", "球队排名", "team year", "rank:count wins:count"),
        _e("player_stats", "player stats", "球员数据", "person_name year", "games:count points:count"),
    )),
    Domain("calendar", "Calendar", "日程", "Calendar", (
        _e("event", "calendar event", "日程事件", "title date duration_minutes notify", "event_id:word start:time"),
        _e("meeting", "meeting", "会议", "title date recipients duration_minutes", "room:word start:time"),
        _e("reminder", "reminder", "提醒", "title due_date priority", "reminder_id:word"),
    )),
    Domain("email", "Email", "邮件", "Mail", (
        _e("email", "email", "邮件", "recipients title text priority", "message_id:word delivered:bool"),
        _e("inbox", "inbox", "收件箱", "keyword limit status", "unread:count total:count"),
        _e("mail_draft", "email draft", "邮件草稿", "title text", "draft_id:word"),
    )),
    Domain("maps", "Maps and navigation", "地图导航", "Maps", (
        _e("route", "route", "路线", "origin destination mode", "distance_km:count minutes:count"),
        _e("place", "place", "地点", "keyword coordinates limit", "name:title rating:rating"),
        _e("traffic", "traffic", "交通状况", "city date", "congestion_percent:percent incidents:count"),
    )),
    Domain("fitness", "Fitness", "健身", "Fitness", (
        _e("workout", "workout", "锻炼计划", "difficulty duration_minutes weekdays", "calories:count exercises:count"),
        _e("bmi", "BMI", "身体质量指数", "weight_kg height_cm", "category:level", "estimate"),
        _e("step_count", "step count", "步数", "person_name date", "steps:count"),
    )),
    Domain("recipes", "Cooking", "烹饪", "Kitchen", (
        _e("recipe", "recipe", "菜谱", "ingredients cuisine servings vegetarian", "name:title minutes:count"),
        _e("nutrition", "nutrition facts", "营养成分", "product_name servings", "calories:count protein_g:count"),
        _e("shopping_list", "shopping list", "购物清单", "ingredients servings", "items:count"),
    )),
    Domain("translation", "Language", "语言翻译", "Lang", (
        _e("translation", "translation", "翻译", "text target_language language",
           "translated_text:word confidence:percent"),
        _e("language_detection", "language detection", "语种识别", "text", "detected_language:lang confidence:percent"),
        _e("dictionary_entry", "dictionary entry", "词典释义", "keyword language", "definitions:count"),
    )),
    Domain("crypto", "Cryptocurrency", "加密货币", "Crypto", (
        _e("coin_price", "coin price", "币价", "coin currency", "price:price change_percent:percent"),
        _e("wallet", "wallet", "钱包", "coin person_name", "balance:price"),
        _e("gas_fee", "network fee", "网络手续费", "coin amount", "fee:price"),
    )),
    Domain("real_estate", "Real estate", "房产", "Realty", (
        _e("listing", "property listing", "房源", "city price_range guests limit", "address:address price:price"),
        _e("mortgage", "mortgage", "房贷", "amount rate year", "monthly_payment:price"),
        _e("property_value", "property value", "房产估值", "address postal_code", "value:price"),
    )),
    Domain("jobs", "Careers", "求职", "Careers", (
        _e("job_posting", "job posting", "职位", "keyword city limit", "company:title salary:price"),
        _e("application", "job application", "职位申请", "title contact", "application_id:word"),
        _e("salary", "salary range", "薪资范围", "keyword city currency", "median:price"),
    )),
    Domain("education", "Education", "教育", "Edu", (
        _e("course", "course", "课程", "topic difficulty language", "course_name:title hours:count"),
        _e("quiz", "quiz", "测验", "topic difficulty quantity title", "quiz_id:word questions:count"),
        _e("library_book", "library book", "图书馆藏书", "isbn city", "available:bool copies:count"),
    )),
    Domain("smart_home", "Smart home", "智能家居", "Home", (
        _e("thermostat", "thermostat", "恒温器", "temperature floor mode", "current_c:temp"),
        _e("light", "light", "灯光", "floor tags", "on:bool brightness:percent"),
        _e("door_lock", "door lock", "门锁", "floor notify", "locked:bool"),
    )),
    Domain("news", "News", "新闻", "News", (
        _e("headline", "headline", "新闻头条", "topic language limit", "headline:title source:word"),
        _e("article", "article", "文章", "title include_details", "author:person words:count"),
        _e("news_digest", "news digest", "新闻摘要", "tags start_date format", "digest_id:word items:count"),
    )),
    Domain("shipping", "Logistics", "物流", "Logistics", (
        _e("parcel", "parcel", "包裹", "postal_code weight_kg express", "tracking:word eta:date", "track"),
        _e("shipping_rate", "shipping rate", "运费", "origin destination weight_kg express", "price:price days:count"),
        _e("pickup", "pickup", "上门取件", "address date", "pickup_id:word window:time"),
    )),
    Domain("health", "Health", "健康", "Health", (
        _e("appointment", "doctor appointment", "门诊预约", "person_name date city", "appointment_id:word time:time"),
        _e("medication_reminder", "medication reminder", "用药提醒", "title schedule", "reminder_id:word"),
        _e("sleep_report", "sleep report", "睡眠报告", "person_name start_date end_date",
           "hours:count quality:percent"),
    )),
    Domain("currency", "Currency exchange", "汇率", "FX", (
        _e("exchange_rate", "exchange rate", "汇率", "currency target_currency date", "rate:price", "get"),
        _e("currency_conversion", "currency conversion", "货币兑换", "amount currency target_currency",
           "converted:price", "estimate"),
    )),
    Domain("rideshare", "Ride hailing", "网约车", "Rides", (
        _e("ride", "ride", "行程", "origin destination guests", "driver:person eta_minutes:count"),
        _e("fare", "fare", "车费", "origin destination distance_km", "fare:price"),
    )),
    # Calculations: what a user asks a calculator-like tool, every value stated in the request.
    # Their results are computed from the arguments (FORMULAS below), not drawn at random.
    Domain("geometry", "Geometry", "几何", "Geometry", (
        _e("triangle_area", "triangle area", "三角形面积", "base height shape_unit", "area:number"),
        _e("circle_area", "circle area", "圆面积", "radius shape_unit", "area:number"),
        _e("rectangle_perimeter", "rectangle perimeter", "矩形周长", "length width shape_unit", "perimeter:number"),
        _e("square_diagonal", "square diagonal", "正方形对角线", "side_length shape_unit", "diagonal:number"),
    )),
    Domain("physics", "Physics", "物理", "Physics", (
        _e("final_velocity", "final velocity", "末速度", "initial_velocity acceleration time_s", "velocity:number"),
        _e("kinetic_energy", "kinetic energy", "动能", "mass_kg velocity", "joules:number"),
        _e("free_fall_time", "free fall time", "自由落体时间", "drop_height", "seconds:number"),
        _e("momentum", "momentum", "动量", "mass_kg velocity", "momentum:number"),
    )),
    Domain("statistics", "Statistics", "统计", "Stats", (
        _e("mean", "mean", "平均值", "numbers decimals", "mean:number"),
        _e("median", "median", "中位数", "numbers", "median:number"),
        _e("standard_deviation", "standard deviation", "标准差", "numbers decimals", "std:number"),
        _e("value_range", "range of values", "极差", "numbers", "range:number"),
    )),
    Domain("investment", "Investment math", "投资计算", "Invest", (
        _e("compound_interest", "compound interest", "复利", "principal rate years compounds_per_year",
           "final_amount:number"),
        _e("simple_interest", "simple interest", "单利", "principal rate years", "interest:number"),
        _e("doubling_time", "doubling time", "翻倍时间", "rate", "years:number"),
        _e("monthly_savings", "monthly savings target", "每月储蓄目标", "principal years", "monthly:number"),
    )),
    Domain("unit_conversion", "Unit conversion", "单位换算", "Units", (
        _e("length", "length", "长度", "value from_unit to_unit", "converted:number"),
        _e("temperature_reading", "temperature reading", "温度读数", "celsius", "fahrenheit:number"),
        _e("weight", "weight", "重量", "kilograms", "pounds:number"),
    )),
    Domain("chemistry", "Chemistry", "化学", "Chem", (
        _e("molar_mass", "molar mass", "摩尔质量", "formula", "grams_per_mole:number"),
        _e("sample_mass", "sample mass", "样品质量", "formula moles", "grams:number"),
        _e("atom_count", "atom count", "原子数", "formula", "atoms:number"),
    )),
    Domain("arithmetic", "Arithmetic", "算术", "MathUtils", (
        _e("factorial", "factorial", "阶乘", "number", "factorial:number"),
        _e("greatest_common_divisor", "greatest common divisor", "最大公约数", "number_a number_b", "gcd:number"),
        _e("power", "power", "幂", "number_a exponent", "result:number"),
        _e("fibonacci_sequence", "Fibonacci sequence", "斐波那契数列", "n_terms", "last_term:number"),
    )),
)


CALCULATION_DOMAINS = {"geometry", "physics", "statistics", "investment", "unit_conversion", "chemistry",
                       "arithmetic"}
CONVERSIONS = {"length", "temperature_reading", "weight"}
_CALCULATION_ENTITIES = {e.key for d in DOMAINS if d.key in CALCULATION_DOMAINS for e in d.entities}

# Grams per mole of the formulas values.FORMULAS offers, and their atom counts.
_MOLAR_MASS = {"H2O": 18.015, "CO2": 44.009, "NaCl": 58.44, "C6H12O6": 180.156, "NH3": 17.031, "CH4": 16.043,
               "C2H5OH": 46.069, "CaCO3": 100.086}
_ATOMS = {"H2O": 3, "CO2": 3, "NaCl": 2, "C6H12O6": 24, "NH3": 4, "CH4": 5, "C2H5OH": 9, "CaCO3": 5}
_METRES = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "in": 0.0254, "ft": 0.3048, "mi": 1609.344}


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b if n > 0 else 0


# entity key -> its result computed from the arguments (the required ones are always present).
FORMULAS: dict[str, Any] = {
    "triangle_area": lambda a: a["base"] * a["height"] / 2,
    "circle_area": lambda a: math.pi * a["radius"] ** 2,
    "rectangle_perimeter": lambda a: 2 * (a["length"] + a["width"]),
    "square_diagonal": lambda a: a["side_length"] * math.sqrt(2),
    "final_velocity": lambda a: a["initial_velocity"] + a["acceleration"] * a["time_s"],
    "kinetic_energy": lambda a: 0.5 * a["mass_kg"] * a["velocity"] ** 2,
    "free_fall_time": lambda a: math.sqrt(2 * a["drop_height"] / 9.81),
    "momentum": lambda a: a["mass_kg"] * a["velocity"],
    "mean": lambda a: statistics.fmean(a["numbers"]),
    "median": lambda a: statistics.median(a["numbers"]),
    "standard_deviation": lambda a: statistics.pstdev(a["numbers"]),
    "value_range": lambda a: max(a["numbers"]) - min(a["numbers"]),
    "compound_interest": lambda a: a["principal"] * (1 + a["rate"] / 100 / a.get("compounds_per_year", 1)) ** (
        a.get("compounds_per_year", 1) * a["years"]),
    "simple_interest": lambda a: a["principal"] * a["rate"] / 100 * a["years"],
    "doubling_time": lambda a: math.log(2) / math.log(1 + a["rate"] / 100),
    "monthly_savings": lambda a: a["principal"] / (12 * a["years"]),
    "length": lambda a: a["value"] * _METRES[a["from_unit"]] / _METRES[a["to_unit"]],
    "temperature_reading": lambda a: a["celsius"] * 9 / 5 + 32,
    "weight": lambda a: a["kilograms"] * 2.20462,
    "molar_mass": lambda a: _MOLAR_MASS[a["formula"]],
    "sample_mass": lambda a: _MOLAR_MASS[a["formula"]] * a["moles"],
    "atom_count": lambda a: _ATOMS[a["formula"]],
    "factorial": lambda a: math.factorial(a["number"]),
    "greatest_common_divisor": lambda a: math.gcd(a["number_a"], a["number_b"]),
    "power": lambda a: a["number_a"] ** a["exponent"],
    "fibonacci_sequence": lambda a: _fib(a["n_terms"]),
}


def _in_order(args: dict[str, Any]) -> None:
    """Date pairs drawn independently could run backwards; a real user gives them in order."""
    for a, b in (("start_date", "end_date"), ("check_in", "check_out")):
        if a in args and b in args and args[a] > args[b]:
            args[a], args[b] = args[b], args[a]
    if args.get("from_unit") is not None and args.get("from_unit") == args.get("to_unit"):
        args["to_unit"] = "m" if args["from_unit"] != "m" else "ft"  # a conversion to the same unit is no request
    for value in args.values():
        if isinstance(value, dict):
            _in_order(value)


# Identity equality: two functions are the same only if they are the same bank entry.
@dataclass(frozen=True, eq=False)
class Function:
    name: str
    domain: Domain
    verb: str
    entity: Entity
    params: tuple[ParamSpec, ...]
    required: tuple[str, ...]
    style: str = field(default="snake")
    summary: str = ""  # the English description ("" -> the short default)
    # English parameter descriptions that differ from the parameter's plain one (formats, an
    # example, a default), and the example/default values they show.
    docs: dict[str, str] = field(default_factory=dict)
    shown: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # also written as JSON Schema "default"

    @cached_property
    def description(self) -> str:
        return self.summary or f"{VERBS[self.verb][0]} the {self.entity.en} ({self.domain.en.lower()})."

    @cached_property
    def description_zh(self) -> str:
        return f"{VERBS[self.verb][2]}{self.entity.zh}（{self.domain.zh}）。"

    def parameters(self, zh: bool = False) -> dict[str, Any]:
        """The JSON schema of the arguments; ``zh`` puts Chinese text in the descriptions."""
        props = {}
        for p in self.params:
            schema = dict(p.schema)
            if zh:
                schema["description"] = p.phrase_zh
            elif p.name in self.docs:
                schema["description"] = self.docs[p.name]
            if p.name in self.defaults and not zh:
                schema["default"] = self.defaults[p.name]
            props[p.name] = schema
        return {"type": "object", "properties": props, "required": list(self.required)}

    @cached_property
    def schema_en(self) -> dict[str, Any]:
        return self.parameters(False)

    @cached_property
    def request_en(self) -> str:
        return f"{VERBS[self.verb][1]} the {self.entity.en}"

    @cached_property
    def request_zh(self) -> str:
        return f"{VERBS[self.verb][2]}{self.entity.zh}"

    def value(self, rng: random.Random, p: ParamSpec, zh: bool) -> Any:
        """A value for ``p`` that is not the example or default the description shows: what a call
        carries must come from the request, so a request never happens to repeat the example."""
        value = p.value(rng, zh)
        for _ in range(4):
            if p.name not in self.shown or value != self.shown[p.name]:
                break
            value = p.value(rng, zh)
        return value

    def arguments(self, rng: random.Random, zh: bool, omit: str | None = None) -> dict[str, Any]:
        """Arguments valid for the schema: all required, each optional with probability 0.4."""
        args: dict[str, Any] = {}
        for p in self.params:
            if p.name == omit:
                continue
            if p.name in self.required or rng.random() < 0.4:
                args[p.name] = self.value(rng, p, zh)
        _in_order(args)
        return args

    def result(self, rng: random.Random, args: dict[str, Any], zh: bool) -> dict[str, Any]:
        """A plausible result consistent with the call: it echoes the arguments it was asked for."""
        fields = {name: _result_value(kind, rng, zh) for name, kind in self.entity.results}
        if self.entity.key in FORMULAS:  # a calculation's one result field is its answer
            answer = FORMULAS[self.entity.key](args)
            fields = {self.entity.results[0][0]: answer if isinstance(answer, int) else round(answer, 4)}
        echo = {k: v for k, v in args.items() if not isinstance(v, (dict, list))}
        if self.verb in ("search", "list"):
            # Never more results than the call's own limit allows.
            count = min(rng.randint(1, 3), args.get("limit", 3))
            items = [fields] + [{n: _result_value(k, rng, zh) for n, k in self.entity.results}
                                for _ in range(count - 1)]
            return {"query": echo, "results": items, "total": len(items)}
        if self.verb in ("create", "book"):
            return {"status": "confirmed", "id": f"{self.entity.key[:3].upper()}-{rng.randint(1000, 9999)}",
                    **echo, **fields}
        if self.verb == "update":
            return {"status": "updated", "updated_fields": sorted(args), **fields}
        if self.verb == "cancel":
            return {"status": "cancelled", **echo}
        return {**echo, **fields}


# Which verbs make sense for which kind of entity: you book a hotel, you do not book the weather.
VERB_CLASSES: dict[str, list[str]] = {
    "info": ["get", "check", "search", "list", "track", "estimate"],
    "record": ["get", "search", "list", "create", "update", "cancel"],
    "booking": ["get", "search", "list", "book", "cancel", "check"],
    "device": ["get", "update", "check", "list"],
    "calculation": ["calculate"],  # one function per entity: calculate_triangle_area
    "conversion": ["convert"],
}
RECORDS = {"event", "meeting", "reminder", "email", "mail_draft", "order", "playlist", "application",
           "transfer", "portfolio", "medication_reminder", "shopping_list", "quiz", "news_digest", "wallet"}
BOOKINGS = {"flight", "hotel", "table_reservation", "movie_ticket", "appointment", "ride", "concert",
            "showtime", "pickup", "course", "boarding_pass"}
DEVICES = {"thermostat", "light", "door_lock"}


def _entity_class(entity: Entity) -> str:
    if entity.key in CONVERSIONS:
        return "conversion"
    if entity.key in _CALCULATION_ENTITIES:
        return "calculation"
    if entity.key in RECORDS:
        return "record"
    if entity.key in BOOKINGS:
        return "booking"
    if entity.key in DEVICES:
        return "device"
    return "info"


def _camel(words: list[str]) -> str:
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def _name(verb: str, entity: Entity, domain: Domain, style: str) -> str:
    words = [verb, *entity.key.split("_")]
    if style == "snake":
        return "_".join(words)
    if style == "camel":
        return _camel(words)
    return f"{domain.namespace}.{_camel(words)}"


_OPTIONAL_INPUTS = {"shape_unit", "decimals", "compounds_per_year"}


def _choose_params(verb: str, entity: Entity, rng: random.Random) -> tuple[list[ParamSpec], list[str]]:
    pool = [P[k] for k in entity.params]
    key, rest = pool[0], pool[1:]
    if verb in ("calculate", "convert"):
        # Every input of the formula is required; units, rounding and compounding are optional
        # (and sometimes not offered at all).
        chosen = [p for p in pool if p.name not in _OPTIONAL_INPUTS or rng.random() < 0.7]
        required = [p.name for p in chosen if p.name not in _OPTIONAL_INPUTS]
    elif verb in ("get", "check", "track", "cancel"):
        chosen = [key, *rng.sample(rest, min(len(rest), rng.randint(0, 2)))]
        required = [key.name] + ([chosen[1].name] if len(chosen) > 1 and rng.random() < 0.3 else [])
    elif verb in ("search", "list"):
        chosen = [key, *rng.sample(rest, min(len(rest), rng.randint(1, 3)))]
        if "limit" not in {p.name for p in chosen}:
            chosen.append(P["limit"])
        # Some list functions take no required argument at all (called as f()).
        required = [] if verb == "list" and rng.random() < 0.5 else [key.name]
    else:  # create, update, book, estimate
        chosen = pool[: max(2, len(pool) - rng.randint(0, 1))]
        required = [p.name for p in chosen[: min(len(chosen), rng.randint(1, 3))]]
    return chosen, required


# Descriptions in the shapes real tool definitions use: a purpose, when to use it, what it returns.
SUMMARIES = (
    "{Verb} the {entity} ({domain}).",
    "{Verb} the {entity} for the given {key}.",
    "{Verb} {entity} information. Use it when the user asks about a {entity}.",
    "{Verb} the {entity}. Returns {returns}.",
    "{Verb} the {entity} in the {domain} service; {key} is required.",
)


def _shown(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value)


def _document(fn_params: list[ParamSpec], required: list[str], rng: random.Random
              ) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """Per-function parameter descriptions: plain, with an example, or with a default (optional
    parameters only). The shown value is drawn from the parameter's own generator."""
    docs: dict[str, str] = {}
    shown: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for p in fn_params:
        if p.schema.get("type") in ("object", "array") or p.name == "location":
            if p.name == "location":  # the format is the point: always shown by example
                docs[p.name] = "The city and its two-letter country code, e.g. 'Madrid, ES'."
                shown[p.name] = "Madrid, ES"
            continue
        base = p.schema["description"].rstrip(".")
        roll = rng.random()
        if p.name not in required and roll < 0.3:
            value = p.value(rng, False)
            docs[p.name] = rng.choice(["{b}. Default: {v}.", "{b} (default {v}).", "{b}; defaults to {v}."]).format(
                b=base, v=_shown(value))
            shown[p.name] = defaults[p.name] = value
        elif roll < 0.65 and p.schema.get("type") != "boolean":
            value = p.value(rng, False)
            docs[p.name] = rng.choice(["{b}, e.g. {v}.", "{b} (for example {v}).", "{b}. Example: {v}."]).format(
                b=base, v=_shown(value))
            shown[p.name] = value
    return docs, shown, defaults


def build_bank(seed: int = BANK_SEED) -> list[Function]:
    rng = random.Random(seed)
    bank: list[Function] = []
    seen: set[str] = set()
    for domain in DOMAINS:
        for entity in domain.entities:
            allowed = VERB_CLASSES[_entity_class(entity)]
            extra = [v for v in rng.sample(allowed, len(allowed)) if v not in entity.verbs]
            verbs = list(entity.verbs) + extra[: rng.randint(4, 5) - len(entity.verbs)]
            for verb in verbs:
                # Prefix families (get_weather / get_weather_forecast) only show up as prefixes
                # when they share a style, so their fixed verbs always use snake_case.
                style = "snake" if verb in entity.verbs else rng.choices(
                    ["snake", "camel", "dotted"], weights=[55, 30, 15])[0]
                name = _name(verb, entity, domain, style)
                if name in seen:
                    continue
                params, required = _choose_params(verb, entity, rng)
                if params[0].name == "city" and rng.random() < 0.3:
                    # "City, CC" instead of a bare city: the user says "Lima", the call needs "Lima, PE".
                    params[0] = P["location"]
                    required = ["location" if r == "city" else r for r in required]
                docs, shown, defaults = _document(params, required, rng)
                summary = rng.choice(SUMMARIES).format(
                    Verb=VERBS[verb][0], entity=entity.en, domain=domain.en.lower(),
                    key=params[0].phrase_en, returns=" and ".join(n.replace("_", " ") for n, _ in entity.results))
                seen.add(name)
                bank.append(Function(name, domain, verb, entity, tuple(params), tuple(required), style,
                                     summary, docs, shown, defaults))
    return bank


BANK: list[Function] = build_bank()
BY_NAME: dict[str, Function] = {f.name: f for f in BANK}
BY_DOMAIN: dict[str, list[Function]] = {}
for _f in BANK:
    BY_DOMAIN.setdefault(_f.domain.key, []).append(_f)

# Domains whose functions never reach the training data: the development evaluation
# (stages/dev_eval.py) is built from them only, so it measures behaviour on tools the model has
# never seen, the way BFCL does — without ever looking at BFCL.
HELDOUT_DOMAINS: frozenset[str] = frozenset({"crypto", "real_estate", "education", "rideshare", "health",
                                                "physics", "statistics"})


@dataclass(frozen=True)
class BankView:
    """A subset of the bank (whole domains) that a generator draws every function from."""

    functions: tuple[Function, ...]
    by_domain: dict[str, list[Function]]
    domains: tuple[Domain, ...]

    @classmethod
    def of(cls, domains: list[Domain]) -> BankView:
        keys = {d.key for d in domains}
        fns = tuple(f for f in BANK if f.domain.key in keys)
        return cls(fns, {k: v for k, v in BY_DOMAIN.items() if k in keys}, tuple(domains))

    def draw(self, rng: random.Random, keep: Callable[[Function], bool] | None = None) -> Function:
        """The function a case is about: a domain first (each equally likely), then one of its
        functions, so that a domain's weight does not grow with its number of verbs (a calculator
        domain has one function per entity, a booking domain five)."""
        while True:
            pool = self.by_domain[rng.choice(self.domains).key]
            if keep is not None:
                pool = [f for f in pool if keep(f)]
            if pool:
                return rng.choice(pool)


TRAIN = BankView.of([d for d in DOMAINS if d.key not in HELDOUT_DOMAINS])
HELDOUT = BankView.of([d for d in DOMAINS if d.key in HELDOUT_DOMAINS])


def openai_tool(fn: Function, zh: bool = False) -> dict[str, Any]:
    return {"type": "function", "function": {"name": fn.name, "description": fn.description_zh if zh
                                             else fn.description, "parameters": fn.parameters(zh)}}

