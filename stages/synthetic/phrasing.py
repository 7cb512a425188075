"""How an English request mentions argument values without naming the parameter.

Real users say "a table for four in Lima on Friday", not "guests set to 4, city set to Lima". A model
trained only on requests that name every parameter right before its value learns to look for the
parameter's name; on real requests it then falls back to whatever text sits near the name — the
examples in the tool's description. So every parameter here has:

- ``MENTIONS[name]``: templates that place the value (``{v}``) in a sentence the way people do;
- ``spoken(name, value)``: the words for a value when they differ from the value itself (language
  codes said as languages, ``premium_economy`` as "premium economy", a location "Lima, PE" said as
  "Lima"), so that the call has to map the user's words to the schema's form;
- boolean parameters have a phrase for ``true`` and one for ``false``.

Nothing here names a parameter. The older, named phrasing ("the city set to Lima") stays in
``cases.named_arguments`` for a share of the rows: some users do write that way.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.synthetic.function_bank import Entity

# Spoken forms of codes and enum values.
LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "zh": "Chinese",
             "ja": "Japanese", "pt": "Portuguese", "ar": "Arabic"}
CURRENCY_WORDS = {"USD": "US dollars", "EUR": "euros", "JPY": "Japanese yen", "GBP": "British pounds",
                  "CNY": "Chinese yuan", "CAD": "Canadian dollars", "INR": "Indian rupees", "CHF": "Swiss francs"}
INTERVALS = {"1d": "daily", "1w": "weekly", "1m": "monthly", "1y": "yearly"}
SORTS = {"asc": "in ascending order", "desc": "in descending order"}
MODES = {"driving": "by car", "walking": "on foot", "cycling": "by bike", "transit": "by public transport"}
FORMATS = {"pdf": "a PDF", "csv": "a CSV file", "json": "JSON"}

MENTIONS: dict[str, tuple[str, ...]] = {
    "city": ("in {v}", "for {v}", "in {v}", "around {v}"),
    "location": ("in {v}", "for {v}"),
    "origin": ("from {v}", "leaving {v}", "departing from {v}"),
    "destination": ("to {v}", "going to {v}", "with {v} as the destination"),
    "person_name": ("for {v}", "for {v}", "under the name {v}"),
    "product_name": ("for the {v}", "for a {v}", "of the {v}"),
    "topic": ("about {v}", "on {v}", "covering {v}"),
    "cuisine": ("serving {v} food", "with {v} cuisine", "that does {v}"),
    "title": ('called "{v}"', '"{v}"', "titled {v}"),
    "team": ("for the {v}", "of the {v}"),
    "keyword": ('matching "{v}"', 'for "{v}"', "with the word {v}"),
    "email": ("at {v}", "to {v}"),
    "ticker": ("for {v}", "of {v}", "of {v} shares"),
    "coin": ("for {v}", "of {v}"),
    "text": ('"{v}"', 'this text: "{v}"'),
    "address": ("at {v}", "for {v}"),
    "postal_code": ("in postal code {v}", "for ZIP code {v}", "in the {v} area"),
    "isbn": ("with ISBN {v}", "ISBN {v}"),
    "currency": ("in {v}",),
    "target_currency": ("into {v}", "to {v}"),
    "language": ("in {v}",),
    "target_language": ("into {v}", "to {v}"),
    "units": ("in {v} units", "using {v} units"),
    "sort_order": ("{v}", "sorted {v}"),
    "priority": ("with {v} priority", "marked as {v} priority"),
    "cabin_class": ("in {v} class", "flying {v}"),
    "room_type": ("a {v} room", "with a {v} room"),
    "interval": ("at a {v} interval", "with {v} data points"),
    "difficulty": ("at {v} level", "that is {v}"),
    "genre": ("in the {v} genre", "{v}"),
    "mode": ("{v}", "going {v}"),
    "size": ("in size {v}", "size {v}"),
    "status": ("that are {v}", "with status {v}"),
    "format": ("as {v}", "in {v} format"),
    "date": ("on {v}", "for {v}"),
    "start_date": ("from {v}", "starting {v}"),
    "end_date": ("until {v}", "through {v}"),
    "check_in": ("checking in on {v}", "arriving {v}"),
    "check_out": ("checking out on {v}", "leaving on {v}"),
    "due_date": ("due {v}", "by {v}"),
    "limit": ("top {v}", "at most {v} results", "just {v} of them", "{v} results"),
    "days": ("for the next {v} days", "over {v} days"),
    "guests": ("for {v} people", "for {v} guests", "for a party of {v}"),
    "quantity": ("{v} of them", "a quantity of {v}", "{v} units"),
    "year": ("in {v}", "from {v}", "for {v}"),
    "page": ("page {v}", "on page {v}"),
    "duration_minutes": ("for {v} minutes", "lasting {v} minutes"),
    "servings": ("for {v} servings", "serving {v}"),
    "age": ("aged {v}", "who is {v} years old"),
    "floor": ("on floor {v}", "on the floor number {v}"),
    "amount": ("of {v}", "for {v}"),
    "weight_kg": ("weighing {v} kg", "of {v} kg"),
    "height_cm": ("{v} cm tall", "with a height of {v} cm"),
    "distance_km": ("of {v} km", "covering {v} km"),
    "temperature": ("to {v} degrees", "at {v} °C"),
    "max_price": ("under {v}", "for at most {v}"),
    "rate": ("at {v}% interest", "with a {v}% rate"),
    "latitude": ("at latitude {v}",),
    "longitude": ("and longitude {v}",),
    "tags": ("tagged {v}", "with the tags {v}"),
    "tickers": ("for {v}", "covering {v}"),
    "ingredients": ("with {v}", "using {v}"),
    "recipients": ("to {v}", "addressed to {v}"),
    "amenities": ("with {v}", "that has {v}"),
    "seat_numbers": ("seats {v}", "for seats {v}"),
    "weekdays": ("on days {v} of the week", "on weekdays {v}"),
    "base": ("with a base of {v}", "whose base is {v}"),
    "height": ("and a height of {v}", "that is {v} high", "with height {v}"),
    "radius": ("with a radius of {v}", "of radius {v}"),
    "side_length": ("with sides of {v}", "whose side is {v}"),
    "length": ("{v} long", "with a length of {v}"),
    "width": ("and {v} wide", "with a width of {v}"),
    "shape_unit": ("in {v}", "measured in {v}"),
    "initial_velocity": ("starting at {v} m/s", "with an initial speed of {v} m/s"),
    "acceleration": ("accelerating at {v} m/s^2", "with an acceleration of {v} m/s²"),
    "time_s": ("after {v} seconds", "over {v} s"),
    "mass_kg": ("for a {v} kg object", "with a mass of {v} kg"),
    "velocity": ("moving at {v} m/s", "at a speed of {v} m/s"),
    "drop_height": ("from {v} metres up", "from a height of {v} m"),
    "numbers": ("of {v}", "for the values {v}", "of this data: {v}"),
    "decimals": ("rounded to {v} decimal places", "to {v} decimals"),
    "principal": ("on {v}", "for an initial deposit of {v}", "on a principal of {v}"),
    "years": ("over {v} years", "for {v} years"),
    "compounds_per_year": ("compounded {v} times a year", "with {v} compounding periods per year"),
    "value": ("{v}", "a value of {v}"),
    "from_unit": ("from {v}", "given in {v}"),
    "to_unit": ("to {v}", "into {v}"),
    "celsius": ("of {v} °C", "for {v} degrees Celsius"),
    "kilograms": ("of {v} kg", "for {v} kilograms"),
    "formula": ("of {v}", "for {v}"),
    "moles": ("for {v} mol", "of {v} moles"),
    "number": ("of {v}", "for {v}"),
    "number_a": ("of {v}", "for {v}"),
    "number_b": ("and {v}",),
    "exponent": ("to the power {v}", "raised to {v}"),
    "n_terms": ("up to term {v}", "with {v} terms"),
}

BOOLEAN_MENTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (phrases when true, phrases when false)
    "include_details": (("with full details", "including all the details"), ("just the basics", "without details")),
    "notify": (("and send a notification", "and notify me"), ("without notifying anyone", "no notification needed")),
    "refundable_only": (("refundable options only", "that can be refunded"), ("refundable or not", "any fare type")),
    "vegetarian": (("vegetarian", "meat-free"), ("not necessarily vegetarian", "any diet")),
    "express": (("with express delivery", "shipped express"), ("with standard delivery", "no rush")),
}


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def spoken(name: str, value: Any, rng: random.Random | None = None) -> str:
    """The words a user says for ``value`` of parameter ``name``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return join_words([spoken(name, v, rng) for v in value])
    if name in ("language", "target_language"):
        return LANGUAGES.get(value, value)
    if name in ("currency", "target_currency"):
        # Users say both "EUR" and "euros".
        return CURRENCY_WORDS.get(value, value) if rng is not None and rng.random() < 0.5 else value
    if name == "interval":
        return INTERVALS.get(value, value)
    if name == "sort_order":
        return SORTS.get(value, value)
    if name == "mode":
        return MODES.get(value, value)
    if name == "format":
        return FORMATS.get(value, value)
    if name == "location" and isinstance(value, str) and ", " in value:
        return value.split(", ")[0]  # the user names the city; the schema wants "City, CC"
    if isinstance(value, str):
        return value.replace("_", " ") if name in ("cabin_class", "room_type") else value
    return str(value)


def _object_mention(rng: random.Random, name: str, value: dict[str, Any]) -> str:
    if name == "price_range":
        lo, hi = value.get("min"), value.get("max")
        return rng.choice(["between {a} and {b}", "priced from {a} to {b}", "in the {a}-{b} price range"]).format(
            a=lo, b=hi)
    if name == "coordinates":
        return rng.choice(["at {a}, {b}", "at latitude {a} and longitude {b}"]).format(
            a=value.get("latitude"), b=value.get("longitude"))
    parts = [mention(rng, k, v) for k, v in value.items()]
    return " ".join(parts)


def mention(rng: random.Random, name: str, value: Any) -> str:
    """One natural phrase for one argument (no parameter name in it)."""
    if isinstance(value, dict):
        return _object_mention(rng, name, value)
    if isinstance(value, bool) and name in BOOLEAN_MENTIONS:
        return rng.choice(BOOLEAN_MENTIONS[name][0 if value else 1])
    templates = MENTIONS.get(name)
    if not templates:
        return f"with {name.replace('_', ' ')} {spoken(name, value, rng)}"
    return rng.choice(templates).format(v=spoken(name, value, rng))


def mention_many(rng: random.Random, name: str, values: list[Any]) -> str:
    """One phrase for several values of the same parameter ("in Paris, Lima and Oslo")."""
    templates = MENTIONS.get(name) or ("for {v}",)
    said = join_words([spoken(name, v, rng) for v in values])
    return rng.choice(templates).format(v=said)


def can_mention_many(name: str, value: Any) -> bool:
    """Whether several values of this parameter read naturally as one list."""
    return not isinstance(value, (dict, list, bool)) and name in MENTIONS and name not in ("text", "latitude",
                                                                                           "longitude")


# Other words people use for an entity (``function_bank.Entity.key`` -> noun phrases that fit
# "get the ...", "book a ..."). A request that always repeats the tool description's own noun
# teaches the call-or-text decision as word matching: the model calls when the noun is in a
# description and refuses when it is not, and then refuses a real request that says "the area of a
# triangle" to a tool that "calculates the triangle area". With these, a request that fits a tool
# often says it in other words (cases.request_text; near-miss requests keep their own noun).
ENTITY_ALIASES: dict[str, tuple[str, ...]] = {
    "weather": ("current conditions", "weather outside"),
    "weather_forecast": ("forecast", "outlook for the next few days"),
    "air_quality": ("pollution level", "air pollution index"),
    "flight": ("plane ticket", "flight ticket"),
    "boarding_pass": ("boarding card", "check-in pass"),
    "baggage_allowance": ("luggage limit", "checked bag allowance"),
    "hotel": ("place to stay", "hotel room"),
    "room_availability": ("free rooms", "vacancies"),
    "hotel_review": ("guest reviews", "hotel ratings"),
    "restaurant": ("place to eat", "dinner spot"),
    "table_reservation": ("dinner booking", "table"),
    "menu": ("dishes on offer", "food they serve"),
    "stock_price": ("share price", "stock quote"),
    "stock_price_history": ("past share prices", "price chart"),
    "portfolio": ("investments", "holdings"),
    "account_balance": ("balance", "money in my account"),
    "transfer": ("bank transfer", "wire"),
    "loan_payment": ("loan installment", "repayment"),
    "product": ("item", "thing to buy"),
    "order": ("purchase", "online order"),
    "order_status": ("delivery status", "order progress"),
    "song": ("track", "tune"),
    "playlist": ("mix", "song list"),
    "concert": ("gig", "live show"),
    "movie": ("film", "picture"),
    "showtime": ("screening times", "session times"),
    "movie_ticket": ("cinema ticket", "film ticket"),
    "match_score": ("game result", "final score"),
    "team_standings": ("league table", "rankings"),
    "player_stats": ("player statistics", "athlete's numbers"),
    "event": ("calendar entry", "scheduled event"),
    "meeting": ("sync", "meeting slot"),
    "reminder": ("alert", "nudge"),
    "email": ("message", "mail"),
    "inbox": ("mailbox", "unread messages"),
    "mail_draft": ("draft message", "unsent email"),
    "route": ("directions", "way there"),
    "place": ("spot", "location"),
    "traffic": ("road conditions", "congestion"),
    "workout": ("exercise session", "training session"),
    "bmi": ("body mass index", "body-mass index"),
    "step_count": ("steps walked", "number of steps"),
    "recipe": ("cooking instructions", "dish to cook"),
    "nutrition": ("calorie info", "nutritional values"),
    "shopping_list": ("grocery list", "list of groceries"),
    "translation": ("translated text", "text in another language"),
    "language_detection": ("language of the text", "language identification"),
    "dictionary_entry": ("word definition", "meaning of a word"),
    "coin_price": ("token price", "crypto quote"),
    "wallet": ("crypto wallet", "coin balance"),
    "gas_fee": ("transaction fee", "gas cost"),
    "listing": ("home for sale", "house listing"),
    "mortgage": ("home loan", "house loan"),
    "property_value": ("home value", "house price estimate"),
    "job_posting": ("job opening", "vacancy ad"),
    "application": ("application for the job", "job app"),
    "salary": ("pay range", "expected pay"),
    "course": ("class", "training course"),
    "quiz": ("test", "practice questions"),
    "library_book": ("book from the library", "borrowed book"),
    "thermostat": ("heating", "temperature setting"),
    "light": ("lamp", "lights"),
    "door_lock": ("front door lock", "smart lock"),
    "headline": ("top stories", "breaking news"),
    "article": ("news story", "piece"),
    "news_digest": ("news summary", "daily briefing"),
    "parcel": ("package", "shipment"),
    "shipping_rate": ("postage", "delivery cost"),
    "pickup": ("courier collection", "collection"),
    "appointment": ("visit to the doctor", "medical appointment"),
    "medication_reminder": ("pill reminder", "medicine alert"),
    "sleep_report": ("sleep summary", "sleep data"),
    "exchange_rate": ("FX rate", "conversion rate"),
    "currency_conversion": ("money conversion", "amount in another currency"),
    "ride": ("taxi", "cab"),
    "fare": ("trip price", "ride cost"),
    "triangle_area": ("area of a triangle", "area of the triangle"),
    "circle_area": ("area of a circle", "circle's area"),
    "rectangle_perimeter": ("perimeter of a rectangle", "distance around the rectangle"),
    "square_diagonal": ("diagonal of a square", "square's diagonal"),
    "final_velocity": ("speed at the end", "velocity after accelerating"),
    "kinetic_energy": ("energy of motion", "kinetic energy of the object"),
    "free_fall_time": ("time to fall", "fall duration"),
    "momentum": ("momentum of the object", "mass times velocity"),
    "mean": ("average", "arithmetic mean"),
    "median": ("middle value", "median value"),
    "standard_deviation": ("spread of the values", "std dev"),
    "value_range": ("gap between the largest and smallest value", "spread from min to max"),
    "compound_interest": ("interest compounded over time", "compounded growth"),
    "simple_interest": ("interest without compounding", "flat interest"),
    "doubling_time": ("time for the money to double", "years to double"),
    "monthly_savings": ("amount to save each month", "monthly saving needed"),
    "length": ("distance", "length in other units"),
    "temperature_reading": ("temperature", "degrees"),
    "weight": ("mass", "weight in other units"),
    "molar_mass": ("molecular weight", "grams per mole"),
    "sample_mass": ("mass of the sample", "grams of the substance"),
    "atom_count": ("number of atoms", "atoms in the sample"),
    "factorial": ("factorial of the number", "n factorial"),
    "greatest_common_divisor": ("GCD", "largest common factor"),
    "power": ("number raised to a power", "exponent result"),
    "fibonacci_sequence": ("Fibonacci numbers", "Fibonacci series"),
}

# Share of English call requests that name the entity in other words than the tool description's.
ALIAS_SHARE = 0.5


def entity_words(rng: random.Random, entity: Entity, aliases: bool = True) -> str:
    """How a request names an entity: its own noun or, at ``ALIAS_SHARE`` when ``aliases`` (a
    request that fits a tool; a near-miss request keeps the own noun), one of its aliases."""
    if aliases and rng.random() < ALIAS_SHARE:
        return rng.choice(ENTITY_ALIASES[entity.key])
    return entity.en
