"""Parameter specifications: a JSON schema plus a generator of values that validate against it.

Every value a synthetic row carries as a call argument comes from one of these generators, so
arguments validate against the function's schema by construction. Values have an English and a
Chinese variant where the words differ (cities, people, products), which is what lets the same
bank serve both ``fc_zh_hard`` and the English kinds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Gen = Callable[[random.Random, bool], Any]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its schema, how to phrase it in a request, and how to draw a value."""

    name: str
    schema: dict[str, Any]
    phrase_en: str
    phrase_zh: str
    gen: Gen = field(compare=False)

    def value(self, rng: random.Random, zh: bool) -> Any:
        return self.gen(rng, zh)


# Pairs (English, Chinese). Invented or generic words only; nothing here comes from any benchmark.
CITIES = [
    ("Paris", "巴黎"), ("Tokyo", "东京"), ("Nairobi", "内罗毕"), ("Lima", "利马"), ("Oslo", "奥斯陆"),
    ("Toronto", "多伦多"), ("Cairo", "开罗"), ("Sydney", "悉尼"), ("Berlin", "柏林"), ("Mumbai", "孟买"),
    ("Shanghai", "上海"), ("Chengdu", "成都"), ("Madrid", "马德里"), ("Seoul", "首尔"), ("Lisbon", "里斯本"),
    ("Hangzhou", "杭州"), ("Vancouver", "温哥华"), ("Dublin", "都柏林"), ("Hanoi", "河内"), ("Quito", "基多"),
]
# ISO 3166 country code of each city above (for "City, CC" location parameters).
COUNTRY_CODES = {
    "Paris": "FR", "Tokyo": "JP", "Nairobi": "KE", "Lima": "PE", "Oslo": "NO", "Toronto": "CA", "Cairo": "EG",
    "Sydney": "AU", "Berlin": "DE", "Mumbai": "IN", "Shanghai": "CN", "Chengdu": "CN", "Madrid": "ES",
    "Seoul": "KR", "Lisbon": "PT", "Hangzhou": "CN", "Vancouver": "CA", "Dublin": "IE", "Hanoi": "VN", "Quito": "EC",
}
PEOPLE = [
    ("Amelia Hart", "王芳"), ("Jonas Berg", "李强"), ("Priya Nair", "张伟"), ("Diego Alvarez", "刘洋"),
    ("Mei Tanaka", "陈静"), ("Omar Haddad", "杨磊"), ("Sofia Rossi", "赵敏"), ("Liam O'Connor", "黄磊"),
    ("Chen Yu", "周杰"), ("Nina Kowalski", "吴婷"),
]
PRODUCTS = [
    ("wireless earbuds", "无线耳机"), ("standing desk", "升降桌"), ("espresso machine", "咖啡机"),
    ("trail running shoes", "越野跑鞋"), ("mechanical keyboard", "机械键盘"), ("yoga mat", "瑜伽垫"),
    ("air purifier", "空气净化器"), ("electric kettle", "电热水壶"), ("backpack", "双肩包"),
    ("desk lamp", "台灯"),
]
TOPICS = [
    ("renewable energy", "可再生能源"), ("urban gardening", "城市园艺"), ("machine learning", "机器学习"),
    ("ancient history", "古代历史"), ("public transport", "公共交通"), ("ocean plastic", "海洋塑料"),
    ("remote work", "远程办公"), ("sleep science", "睡眠科学"), ("jazz music", "爵士乐"),
    ("space exploration", "太空探索"),
]
CUISINES = [("Italian", "意大利菜"), ("Sichuan", "川菜"), ("Mexican", "墨西哥菜"), ("Thai", "泰国菜"),
            ("Ethiopian", "埃塞俄比亚菜"), ("Japanese", "日本料理"), ("Lebanese", "黎巴嫩菜")]
LANG_CODES = ["en", "fr", "de", "es", "zh", "ja", "pt", "ar"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CNY", "CAD", "INR", "CHF"]
TICKERS = ["NOVA", "QRTZ", "BLUF", "HXLT", "MAPL", "ZENT", "KORA", "VYNE"]
COINS = ["BTC", "ETH", "SOL", "ADA", "DOT", "XRP"]
WORDS = ["sunrise", "harbor", "velvet", "maple", "orbit", "lantern", "meadow", "ember", "cobalt", "willow"]
WORDS_ZH = ["日出", "港湾", "丝绒", "枫叶", "轨道", "灯笼", "草地", "余烬", "钴蓝", "柳树"]
TITLES = [("Silent Harbor", "寂静港湾"), ("The Glass Orchard", "玻璃果园"), ("Northbound", "北行"),
          ("Paper Lanterns", "纸灯笼"), ("Midnight Atlas", "午夜地图集"), ("Copper Rain", "铜色的雨")]
FORMULAS = ["H2O", "CO2", "NaCl", "C6H12O6", "NH3", "CH4", "C2H5OH", "CaCO3"]
LENGTH_UNITS = ["mm", "cm", "m", "km", "in", "ft", "mi"]
TEAMS = [("Riverside Falcons", "河畔猎鹰"), ("Harbor City Waves", "港城浪潮"), ("Summit Bears", "山巅熊"),
         ("Desert Comets", "沙漠彗星"), ("Lakeside Owls", "湖畔猫头鹰")]


def _location(rng: random.Random, zh: bool) -> str:
    en, zh_name = rng.choice(CITIES)
    return f"{zh_name if zh else en}, {COUNTRY_CODES[en]}"


def pick_pair(pool: list[tuple[str, str]]) -> Gen:
    return lambda rng, zh: rng.choice(pool)[1 if zh else 0]


def string(name: str, en: str, zh: str, desc: str, gen: Gen, **extra: Any) -> ParamSpec:
    return ParamSpec(name, {"type": "string", "description": desc, **extra}, en, zh, gen)


def ident(name: str, en: str, zh: str, prefix: str) -> ParamSpec:
    return string(name, en, zh, f"The unique identifier of the {en}.",
                  lambda rng, zh_: f"{prefix}-{rng.randint(10000, 99999)}")


def date(name: str, en: str, zh: str) -> ParamSpec:
    def gen(rng: random.Random, zh_: bool) -> str:
        return f"{rng.randint(2024, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"

    return string(name, en, zh, f"The {en} in YYYY-MM-DD format.", gen, format="date")


def integer(name: str, en: str, zh: str, lo: int, hi: int) -> ParamSpec:
    return ParamSpec(name, {"type": "integer", "description": f"The {en} ({lo} to {hi}).",
                            "minimum": lo, "maximum": hi}, en, zh, lambda rng, zh_: rng.randint(lo, hi))


def number(name: str, en: str, zh: str, lo: float, hi: float) -> ParamSpec:
    return ParamSpec(name, {"type": "number", "description": f"The {en}.", "minimum": lo, "maximum": hi},
                     en, zh, lambda rng, zh_: round(rng.uniform(lo, hi), 2))


def num_array(name: str, en: str, zh: str, lo: int, hi: int) -> ParamSpec:
    """A list of 3-6 numbers (a data series); whole numbers or one decimal place."""

    def gen(rng: random.Random, zh_: bool) -> list[float]:
        whole = rng.random() < 0.6
        return [rng.randint(lo, hi) if whole else round(rng.uniform(lo, hi), 1) for _ in range(rng.randint(3, 6))]

    return ParamSpec(name, {"type": "array", "description": f"The list of {en}.", "items": {"type": "number"}},
                     en, zh, gen)


def boolean(name: str, en: str, zh: str) -> ParamSpec:
    return ParamSpec(name, {"type": "boolean", "description": f"Whether to {en}."}, en, zh,
                     lambda rng, zh_: rng.random() < 0.5)


def enum(name: str, en: str, zh: str, values: list[str]) -> ParamSpec:
    return ParamSpec(name, {"type": "string", "description": f"The {en}.", "enum": values}, en, zh,
                     lambda rng, zh_: rng.choice(values))


def str_array(name: str, en: str, zh: str, pool_en: list[str], pool_zh: list[str] | None = None) -> ParamSpec:
    def gen(rng: random.Random, zh_: bool) -> list[str]:
        pool = pool_zh if (zh_ and pool_zh) else pool_en
        return rng.sample(pool, rng.randint(1, min(3, len(pool))))

    return ParamSpec(name, {"type": "array", "description": f"The list of {en}.", "items": {"type": "string"}},
                     en, zh, gen)


def int_array(name: str, en: str, zh: str, lo: int, hi: int) -> ParamSpec:
    return ParamSpec(name, {"type": "array", "description": f"The list of {en}.",
                            "items": {"type": "integer", "minimum": lo, "maximum": hi}}, en, zh,
                     lambda rng, zh_: sorted(rng.sample(range(lo, hi + 1), rng.randint(1, 3))))


def obj(name: str, en: str, zh: str, props: list[ParamSpec], required: list[str]) -> ParamSpec:
    """A nested object; optional sub-fields are included at random, required ones always."""

    def gen(rng: random.Random, zh_: bool) -> dict[str, Any]:
        return {p.name: p.value(rng, zh_) for p in props if p.name in required or rng.random() < 0.5}

    schema = {"type": "object", "description": f"The {en}.",
              "properties": {p.name: p.schema for p in props}, "required": required}
    return ParamSpec(name, schema, en, zh, gen)


# A registry of parameters shared by the domains. Keys are what domain tables refer to.
P: dict[str, ParamSpec] = {}


def _reg(*specs: ParamSpec) -> None:
    for spec in specs:
        P[spec.name] = spec


_reg(
    string("city", "city", "城市", "The city name.", pick_pair(CITIES)),
    string("location", "location", "位置", "The city and its two-letter country code.", _location),
    string("origin", "departure city", "出发城市", "The departure city.", pick_pair(CITIES)),
    string("destination", "destination city", "目的地城市", "The destination city.", pick_pair(CITIES)),
    string("person_name", "person's name", "姓名", "The full name of the person.", pick_pair(PEOPLE)),
    string("product_name", "product name", "商品名称", "The product name.", pick_pair(PRODUCTS)),
    string("topic", "topic", "主题", "The topic to look into.", pick_pair(TOPICS)),
    string("cuisine", "cuisine", "菜系", "The cuisine type.", pick_pair(CUISINES)),
    string("title", "title", "标题", "The title.", pick_pair(TITLES)),
    string("team", "team name", "球队名称", "The team name.", pick_pair(TEAMS)),
    string("keyword", "keyword", "关键词", "A search keyword.",
           lambda rng, zh: rng.choice(WORDS_ZH if zh else WORDS)),
    string("email", "email address", "电子邮箱", "The email address.",
           lambda rng, zh: f"{rng.choice(WORDS)}.{rng.randint(10, 99)}@example.org"),
    string("ticker", "stock ticker", "股票代码", "The stock ticker symbol.", lambda rng, zh: rng.choice(TICKERS)),
    string("coin", "coin symbol", "币种代码", "The cryptocurrency symbol.", lambda rng, zh: rng.choice(COINS)),
    string("text", "text", "文本", "The text to process.",
           lambda rng, zh: " ".join(rng.sample(WORDS_ZH if zh else WORDS, 3))),
    string("address", "street address", "地址", "The street address.",
           lambda rng, zh: (f"{rng.choice(CITIES)[1]}{rng.choice(WORDS_ZH)}路{rng.randint(1, 300)}号" if zh
                            else f"{rng.randint(1, 300)} {rng.choice(WORDS).title()} Street")),
    string("postal_code", "postal code", "邮政编码", "The postal code.",
           lambda rng, zh: f"{rng.randint(10000, 99999)}"),
    string("isbn", "ISBN", "ISBN", "The 13-digit ISBN.", lambda rng, zh: f"978{rng.randint(10**9, 10**10 - 1)}",
           pattern="^[0-9]{13}$"),
    enum("currency", "currency code", "货币代码", CURRENCIES),
    enum("target_currency", "target currency code", "目标货币", CURRENCIES),
    enum("language", "language code", "语言代码", LANG_CODES),
    enum("target_language", "target language code", "目标语言", LANG_CODES),
    enum("units", "unit system", "单位制", ["metric", "imperial"]),
    enum("sort_order", "sort order", "排序方式", ["asc", "desc"]),
    enum("priority", "priority level", "优先级", ["low", "normal", "high", "urgent"]),
    enum("cabin_class", "cabin class", "舱位", ["economy", "premium_economy", "business", "first"]),
    enum("room_type", "room type", "房型", ["single", "double", "suite"]),
    enum("interval", "time interval", "时间间隔", ["1d", "1w", "1m", "1y"]),
    enum("difficulty", "difficulty level", "难度", ["easy", "medium", "hard"]),
    enum("genre", "genre", "类型", ["rock", "jazz", "classical", "hip-hop", "folk", "electronic"]),
    enum("mode", "travel mode", "出行方式", ["driving", "walking", "cycling", "transit"]),
    enum("size", "size", "尺码", ["S", "M", "L", "XL"]),
    enum("status", "status filter", "状态", ["open", "closed", "pending"]),
    enum("format", "output format", "输出格式", ["pdf", "csv", "json"]),
    date("date", "date", "日期"),
    date("start_date", "start date", "开始日期"),
    date("end_date", "end date", "结束日期"),
    date("check_in", "check-in date", "入住日期"),
    date("check_out", "check-out date", "退房日期"),
    date("due_date", "due date", "截止日期"),
    integer("limit", "maximum number of results", "返回结果数量上限", 1, 50),
    integer("days", "number of days", "天数", 1, 14),
    integer("guests", "number of guests", "人数", 1, 8),
    integer("quantity", "quantity", "数量", 1, 20),
    integer("year", "year", "年份", 1990, 2026),
    integer("page", "page number", "页码", 1, 20),
    integer("duration_minutes", "duration in minutes", "时长（分钟）", 5, 240),
    integer("servings", "number of servings", "份数", 1, 12),
    integer("age", "age in years", "年龄", 1, 99),
    integer("floor", "floor number", "楼层", 1, 40),
    number("amount", "amount of money", "金额", 1, 5000),
    number("weight_kg", "weight in kilograms", "重量（千克）", 0.1, 150),
    number("height_cm", "height in centimetres", "身高（厘米）", 50, 220),
    number("distance_km", "distance in kilometres", "距离（公里）", 0.5, 500),
    number("temperature", "target temperature in Celsius", "目标温度（摄氏度）", 16, 30),
    number("max_price", "maximum price", "最高价格", 10, 2000),
    number("rate", "annual interest rate in percent", "年利率（百分比）", 0.5, 15),
    number("latitude", "latitude", "纬度", -60, 70),
    number("longitude", "longitude", "经度", -170, 170),
    boolean("include_details", "include detailed information", "是否包含详细信息"),
    boolean("notify", "send a notification", "是否发送通知"),
    boolean("refundable_only", "only show refundable options", "是否只看可退款选项"),
    boolean("vegetarian", "only show vegetarian options", "是否只要素食"),
    boolean("express", "use express delivery", "是否加急"),
    str_array("tags", "tags", "标签", WORDS, WORDS_ZH),
    str_array("tickers", "stock tickers", "股票代码列表", TICKERS),
    str_array("ingredients", "ingredients", "食材",
              ["tomato", "garlic", "rice", "tofu", "basil", "lentils", "spinach"],
              ["番茄", "大蒜", "米饭", "豆腐", "罗勒", "扁豆", "菠菜"]),
    str_array("recipients", "recipient email addresses", "收件人",
              [f"{w}@example.org" for w in WORDS]),
    str_array("amenities", "required amenities", "设施要求", ["wifi", "pool", "parking", "gym", "breakfast"]),
    int_array("seat_numbers", "seat numbers", "座位号", 1, 60),
    int_array("weekdays", "weekdays as numbers 1-7", "星期几（1-7）", 1, 7),
)
_reg(
    # Calculation parameters (the geometry, physics, statistics, investment, conversion, chemistry and
    # arithmetic domains): numbers the user states, units, data series.
    integer("base", "base length", "底边长度", 1, 100),
    integer("height", "height", "高", 1, 100),
    number("radius", "radius", "半径", 0.5, 50),
    integer("side_length", "side length", "边长", 1, 100),
    integer("length", "length", "长度", 1, 200),
    integer("width", "width", "宽度", 1, 200),
    enum("shape_unit", "unit of length", "长度单位", ["cm", "m", "in", "ft"]),
    integer("initial_velocity", "initial velocity in m/s", "初速度（米/秒）", 0, 60),
    integer("acceleration", "acceleration in m/s^2", "加速度（米/秒²）", 1, 20),
    integer("time_s", "time in seconds", "时间（秒）", 1, 120),
    integer("mass_kg", "mass in kilograms", "质量（千克）", 1, 2000),
    integer("velocity", "velocity in m/s", "速度（米/秒）", 1, 120),
    integer("drop_height", "height in metres", "高度（米）", 1, 500),
    num_array("numbers", "numbers", "数值", 1, 200),
    integer("decimals", "number of decimal places", "小数位数", 0, 4),
    integer("principal", "principal amount", "本金", 100, 100000),
    integer("years", "number of years", "年数", 1, 40),
    integer("compounds_per_year", "number of times interest compounds per year", "每年复利次数", 1, 12),
    number("value", "value to convert", "待换算的数值", 0.5, 1000),
    enum("from_unit", "unit to convert from", "原单位", LENGTH_UNITS),
    enum("to_unit", "unit to convert to", "目标单位", LENGTH_UNITS),
    integer("celsius", "temperature in Celsius", "摄氏温度", -40, 120),
    number("kilograms", "mass in kilograms", "千克数", 0.1, 500),
    string("formula", "chemical formula", "化学式", "The chemical formula.",
           lambda rng, zh: rng.choice(FORMULAS)),
    number("moles", "amount in moles", "物质的量（摩尔）", 0.1, 20),
    integer("number", "number", "数字", 1, 30),
    integer("number_a", "first number", "第一个数", 2, 500),
    integer("number_b", "second number", "第二个数", 2, 500),
    integer("exponent", "exponent", "指数", 2, 10),
    integer("n_terms", "number of terms", "项数", 1, 40),
)
_reg(
    obj("price_range", "price range", "价格区间",
        [number("min", "minimum price", "最低价", 0, 100), number("max", "maximum price", "最高价", 100, 3000)],
        ["min", "max"]),
    obj("coordinates", "geographic coordinates", "坐标", [P["latitude"], P["longitude"]],
        ["latitude", "longitude"]),
    obj("contact", "contact details", "联系方式", [P["person_name"], P["email"]], ["person_name"]),
    obj("schedule", "schedule", "时间安排", [P["start_date"], P["end_date"], P["weekdays"]], ["start_date"]),
    obj("shipping", "shipping options", "配送选项", [P["address"], P["express"], P["postal_code"]], ["address"]),
)
