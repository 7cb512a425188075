"""A home pantry: stocked items with expiry dates and places, and a shopping list (training environment)."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from stages.synthetic.environments.base import Environment, Plan, Request, ToolError, integer, pick, string, tool

TODAY = "2026-04-18"
LOCATIONS = ["dry shelf", "can rack", "fridge", "freezer", "snack drawer"]
# name -> (unit, typical pack sizes, shelf life in days from today as (low, high), where it is kept).
# Some lows are negative so that a fresh world can already hold something past its date.
_GOODS: dict[str, tuple[str, list[int], tuple[int, int], str]] = {
    "basmati rice": ("g", [500, 1000, 2000], (90, 400), "dry shelf"),
    "rolled oats": ("g", [500, 750, 1000], (-5, 300), "dry shelf"),
    "red lentils": ("g", [500, 1000], (90, 400), "dry shelf"),
    "spaghetti": ("g", [500, 1000], (90, 500), "dry shelf"),
    "plain flour": ("g", [1000, 1500], (-10, 300), "dry shelf"),
    "ground coffee": ("g", [250, 500], (20, 200), "dry shelf"),
    "black tea": ("bags", [20, 40, 80], (100, 600), "dry shelf"),
    "olive oil": ("ml", [500, 750, 1000], (100, 500), "dry shelf"),
    "chickpeas": ("cans", [1, 2, 3, 4, 6], (180, 700), "can rack"),
    "coconut milk": ("cans", [1, 2, 3, 4], (120, 600), "can rack"),
    "tomato passata": ("jars", [1, 2, 3], (-4, 400), "can rack"),
    "peanut butter": ("jars", [1, 2], (30, 200), "snack drawer"),
    "dark chocolate": ("bars", [1, 2, 3, 4], (60, 300), "snack drawer"),
    "salted crackers": ("packs", [1, 2, 3], (-4, 120), "snack drawer"),
    "whole milk": ("ml", [1000, 2000], (-2, 9), "fridge"),
    "greek yogurt": ("pots", [2, 3, 4, 6], (-3, 14), "fridge"),
    "aged cheddar": ("g", [200, 400], (5, 40), "fridge"),
    "salted butter": ("g", [250, 500], (10, 60), "fridge"),
    "baby spinach": ("g", [150, 250], (-2, 6), "fridge"),
    "frozen peas": ("g", [500, 1000], (60, 300), "freezer"),
    "fish fingers": ("packs", [1, 2, 3], (30, 200), "freezer"),
    "vanilla ice cream": ("tubs", [1, 2], (30, 200), "freezer"),
}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


def _plus_days(date: str, days: int) -> str:
    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


def _amount(quantity: int, unit: str) -> str:
    """'500 g', '1 can', '3 cans': how a person says a quantity."""
    if unit in ("g", "ml"):
        return f"{quantity} {unit}"
    return f"{quantity} {unit[:-1] if quantity == 1 and unit.endswith('s') else unit}"


def _say_date(rng: random.Random, date: str) -> str:
    day = dt.date.fromisoformat(date)
    return rng.choice([date, f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"])


def _listing(items: list[dict[str, Any]]) -> str:
    return "; ".join(f"{i['name']} ({_amount(i['quantity'], i['unit'])}, until {i['expires']})" for i in items)


class Pantry(Environment):
    name = "pantry"
    title = "kitchen pantry"
    related_domains = ("recipes",)

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        items = {}
        for i, good in enumerate(rng.sample(sorted(_GOODS), rng.randint(8, 11))):
            unit, sizes, (low, high), location = _GOODS[good]
            items[f"P-{101 + i * 3}"] = {"name": good, "quantity": rng.choice(sizes), "unit": unit,
                                         "expires": _plus_days(TODAY, rng.randint(low, high)), "location": location}
        shopping = {}
        for i, good in enumerate(rng.sample(sorted(_GOODS), rng.randint(2, 4))):
            unit, sizes, _, _ = _GOODS[good]
            shopping[f"S-{301 + i * 2}"] = {"name": good, "quantity": rng.choice(sizes), "unit": unit}
        return {"today": TODAY, "items": items, "shopping": shopping, "next_item": 140, "next_entry": 320}

    # ------------------------------------------------------------------ functions

    @tool("Lists the pantry items with quantity, unit, expiry date and place, optionally only those in one place.",
          "list what is in the pantry",
          location=string("Only list items kept here.", enum=LOCATIONS, optional=True))
    def list_pantry_items(self, location: str | None = None) -> dict[str, Any]:
        rows = [self._row(k) for k, v in self.state["items"].items() if location in (None, v["location"])]
        return {"items": rows, "total": len(rows)}

    @tool("Finds pantry items whose name contains all the given words.", "look for an item in the pantry",
          query=string("Words of the item's name, e.g. 'rice'."))
    def find_pantry_item(self, query: str) -> dict[str, Any]:
        words = query.lower().split()
        rows = [self._row(k) for k, v in self.state["items"].items() if words and all(w in v["name"] for w in words)]
        return {"results": rows, "total": len(rows)}

    @tool("Adds a newly bought item to the pantry.", "add groceries to the pantry",
          name=string("What the item is, e.g. 'red lentils'."),
          quantity=integer("How much there is, in the unit given.", minimum=1),
          unit=string("The unit of the quantity, e.g. 'g', 'ml', 'cans', 'jars', 'packs'."),
          expires=string("The best-before date, YYYY-MM-DD.", format="date"),
          location=string("Where the item is kept.", enum=LOCATIONS))
    def add_pantry_item(self, name: str, quantity: int, unit: str, expires: str, location: str) -> dict[str, Any]:
        item_id = self._new_item(name.lower(), quantity, unit, expires, location)
        return {"item_id": item_id, **self.state["items"][item_id]}

    @tool("Takes an amount of an item out of the pantry (an item used up is removed).", "use up some of an item",
          item_id=string("The item's ID, e.g. 'P-104'."),
          amount=integer("How much was used, in the item's unit.", minimum=1))
    def use_pantry_item(self, item_id: str, amount: int) -> dict[str, Any]:
        item = self._item(item_id)
        if amount > item["quantity"]:
            raise ToolError(f"only {_amount(item['quantity'], item['unit'])} of {item['name']} is left")
        item["quantity"] -= amount
        if item["quantity"] == 0:
            del self.state["items"][item_id]
        return {"item_id": item_id, "name": item["name"], "left": item["quantity"], "unit": item["unit"],
                "used_up": item["quantity"] == 0}

    @tool("Removes an item from the pantry, e.g. when it went off.", "throw an item away",
          item_id=string("The item's ID."))
    def discard_pantry_item(self, item_id: str) -> dict[str, Any]:
        item = self._item(item_id)
        del self.state["items"][item_id]
        return {"discarded": item_id, "name": item["name"]}

    @tool("Lists the items whose best-before date is earlier than a date, soonest first.",
          "check what expires soon",
          before=string("The date, YYYY-MM-DD; leave it out for items already past their date today.", format="date",
                        optional=True))
    def list_expiring_items(self, before: str | None = None) -> dict[str, Any]:
        limit = before or self.state["today"]
        self._date(limit)
        rows = sorted((self._row(k) for k, v in self.state["items"].items() if v["expires"] < limit),
                      key=lambda r: (r["expires"], r["item_id"]))
        return {"before": limit, "items": rows}

    @tool("Puts something on the shopping list.", "add to the shopping list",
          name=string("What to buy, e.g. 'coconut milk'."),
          quantity=integer("How much to buy.", minimum=1),
          unit=string("The unit of the quantity, e.g. 'g', 'cans', 'packs'."))
    def add_shopping_entry(self, name: str, quantity: int, unit: str) -> dict[str, Any]:
        name = name.lower()
        if any(e["name"] == name for e in self.state["shopping"].values()):
            raise ToolError(f"{name} is already on the shopping list")
        entry_id = f"S-{self.state['next_entry']}"
        self.state["next_entry"] += 1
        self.state["shopping"][entry_id] = {"name": name, "quantity": quantity, "unit": unit}
        return {"entry_id": entry_id, "name": name}

    @tool("Takes an entry off the shopping list without buying it.", "remove something from the shopping list",
          entry_id=string("The entry's ID, e.g. 'S-303'."))
    def remove_shopping_entry(self, entry_id: str) -> dict[str, Any]:
        entry = self._item(entry_id, "shopping")
        del self.state["shopping"][entry_id]
        return {"removed": entry_id, "name": entry["name"]}

    @tool("Returns the shopping list.", "show the shopping list")
    def view_shopping_list(self) -> dict[str, Any]:
        rows = [{"entry_id": k, **v} for k, v in self.state["shopping"].items()]
        return {"entries": rows, "total": len(rows)}

    @tool("Moves a bought shopping-list entry into the pantry as a new item.", "put away the shopping",
          entry_id=string("The entry's ID."),
          expires=string("The bought item's best-before date, YYYY-MM-DD.", format="date"),
          location=string("Where the item goes.", enum=LOCATIONS))
    def put_away_purchase(self, entry_id: str, expires: str, location: str) -> dict[str, Any]:
        entry = self._item(entry_id, "shopping")
        if self._date(expires) < self.state["today"]:
            raise ToolError(f"{expires} has already passed: that {entry['name']} should not be stored")
        item_id = self._new_item(entry["name"], entry["quantity"], entry["unit"], expires, location)
        del self.state["shopping"][entry_id]
        return {"item_id": item_id, **self.state["items"][item_id]}

    # ------------------------------------------------------------------ lookups

    def _row(self, item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, **self.state["items"][item_id]}

    def _item(self, item_id: str, table: str = "items") -> dict[str, Any]:
        if item_id not in self.state[table]:
            raise ToolError(f"no {'pantry item' if table == 'items' else 'shopping-list entry'} with ID {item_id}")
        return self.state[table][item_id]

    @staticmethod
    def _date(text: str) -> str:
        try:
            return dt.date.fromisoformat(text).isoformat()
        except ValueError:
            raise ToolError(f"{text!r} is not a date like 2026-05-01") from None

    def _new_item(self, name: str, quantity: int, unit: str, expires: str, location: str) -> str:
        item_id = f"P-{self.state['next_item']}"
        self.state["next_item"] += 1
        self.state["items"][item_id] = {"name": name, "quantity": quantity, "unit": unit,
                                        "expires": self._date(expires), "location": location}
        return item_id

    def _single(self) -> list[str]:
        """Items whose name no other item shares: a user can name them without an ID."""
        names = [v["name"] for v in self.state["items"].values()]
        return sorted(k for k, v in self.state["items"].items() if names.count(v["name"]) == 1)

    def _listed(self, name: str) -> bool:
        return any(e["name"] == name for e in self.state["shopping"].values())

    def _expiry(self, name: str) -> str:
        """A plausible best-before date for a fresh pack: the middle of the good's shelf life."""
        low, high = _GOODS[name][2] if name in _GOODS else (20, 40)
        return _plus_days(TODAY, max(3, (low + high) // 2))

    # ------------------------------------------------------------------ requests

    def ask_use(self, rng: random.Random) -> Request | None:
        item_id = pick(rng, self._single())
        if item_id is None:
            return None
        item = self.state["items"][item_id]
        name, unit, have = item["name"], item["unit"], item["quantity"]
        steps = [a for a in (50, 100, 150, 200, 250, 500) if a <= have] if unit in ("g", "ml") else []
        amount = rng.choice(steps) if steps else rng.randint(1, have)
        used = _amount(amount, unit)

        def plan() -> Plan:
            found = yield [("find_pantry_item", {"query": name})]
            target = next(r["item_id"] for r in found[0]["results"] if r["name"] == name)
            done = yield [("use_pantry_item", {"item_id": target, "amount": amount})]
            if done[0]["used_up"]:
                return f"That was the last of the {name}, so it is off the pantry list now."
            return f"Noted: {_amount(done[0]['left'], unit)} of {name} left."

        ask = rng.choice(["I just used {u} of the {n}.", "Take {u} of {n} off the pantry, I cooked with it.",
                          "Please log that I used {u} of {n}."])
        return Request(ask.format(u=used, n=name), plan(), partial=(
            rng.choice(["I used some of the {n}.", "Please update the {n}; I cooked with some."]).format(n=name),
            f"Sure. How much of the {name} did you use?", rng.choice(["{u}.", "It was {u}."]).format(u=used)))

    def ask_clear_expired(self, rng: random.Random) -> Request | None:
        def plan() -> Plan:
            found = yield [("list_expiring_items", {})]
            old = found[0]["items"]
            if not old:
                return "Nothing in the pantry is past its date, so there is nothing to throw away."
            done = yield [("discard_pantry_item", {"item_id": r["item_id"]}) for r in old]
            return "Thrown away: " + ", ".join(d["name"] for d in done) + "."

        return Request(rng.choice(["Throw out everything in the pantry that has gone past its date.",
                                   "Please clear out any expired food.",
                                   "Remove whatever is already out of date from my pantry."]), plan())

    def ask_expiring(self, rng: random.Random) -> Request | None:
        before = _plus_days(TODAY, rng.choice([3, 5, 7, 10, 14]))

        def plan() -> Plan:
            found = yield [("list_expiring_items", {"before": before})]
            rows = found[0]["items"]
            if not rows:
                return f"Nothing expires before {before}."
            return f"Expiring before {before}: {_listing(rows)}."

        said = _say_date(rng, before)
        ask = rng.choice(["What in my pantry expires before {d}?", "Which items go off before {d}?",
                          "Anything I should use up before {d}?"])
        return Request(ask.format(d=said), plan(), partial=(
            rng.choice(["What's going to expire soon?", "Which of my groceries go off soon?"]),
            "Up to which date should I check?", rng.choice(["Before {d}.", "Anything before {d}."]).format(d=said)))

    def ask_finished(self, rng: random.Random) -> Request | None:
        item_id = pick(rng, [k for k in self._single() if not self._listed(self.state["items"][k]["name"])])
        if item_id is None:
            return None
        name, unit = self.state["items"][item_id]["name"], self.state["items"][item_id]["unit"]
        buy = rng.choice(_GOODS[name][1]) if name in _GOODS else 1
        wanted = _amount(buy, unit)

        def plan() -> Plan:
            found = yield [("find_pantry_item", {"query": name})]
            target = next(r["item_id"] for r in found[0]["results"] if r["name"] == name)
            done = yield [("discard_pantry_item", {"item_id": target}),
                          ("add_shopping_entry", {"name": name, "quantity": buy, "unit": unit})]
            return f"Removed {name} from the pantry and put {wanted} on the shopping list ({done[1]['entry_id']})."

        ask = rng.choice(["We finished the {n}. Clear it out of the pantry and add {w} to the shopping list.",
                          "There's no {n} left: remove it and put {w} on my shopping list, please."])
        return Request(ask.format(n=name, w=wanted), plan(), partial=(
            f"We ran out of {name}. Take it off the pantry and put it on the shopping list, please.",
            f"Will do. How much {name} should go on the list?", rng.choice(["{w}.", "Make it {w}."]).format(w=wanted)))

    def ask_shopping_add(self, rng: random.Random) -> Request | None:
        free = [g for g in sorted(_GOODS) if not self._listed(g)]
        if not free:
            return None
        goods = rng.sample(free, min(len(free), rng.choice([1, 2, 2])))
        buys = [(g, rng.choice(_GOODS[g][1]), _GOODS[g][0]) for g in goods]

        def plan() -> Plan:
            done = yield [("add_shopping_entry", {"name": g, "quantity": q, "unit": u}) for g, q, u in buys]
            return "Added to the shopping list: " + ", ".join(f"{d['name']} ({d['entry_id']})" for d in done) + "."

        wants = " and ".join(f"{_amount(q, u)} of {g}" for g, q, u in buys)
        return Request(rng.choice(["Add {w} to the shopping list.", "Put {w} on my shopping list, please.",
                                   "I need to buy {w}; note it down."]).format(w=wants), plan())

    def ask_shopping_remove(self, rng: random.Random) -> Request | None:
        entry_id = pick(rng, sorted(self.state["shopping"]))
        if entry_id is None:
            return None
        name = self.state["shopping"][entry_id]["name"]

        def plan() -> Plan:
            listed = yield [("view_shopping_list", {})]
            target = next(e["entry_id"] for e in listed[0]["entries"] if e["name"] == name)
            yield [("remove_shopping_entry", {"entry_id": target})]
            return f"Removed {name} from the shopping list."

        return Request(rng.choice(["Take {n} off the shopping list.", "I don't need {n} after all; remove it from the "
                                   "list.", "Cross {n} off my shopping list."]).format(n=name), plan())

    def ask_put_away(self, rng: random.Random) -> Request | None:
        entries = sorted(self.state["shopping"])
        if not entries:
            return None
        chosen = rng.sample(entries, min(len(entries), rng.choice([1, 1, 2])))
        bought = [(self.state["shopping"][e]["name"], self._expiry(self.state["shopping"][e]["name"])) for e in chosen]
        places = {n: _GOODS[n][3] if n in _GOODS else "dry shelf" for n, _ in bought}

        def plan() -> Plan:
            listed = yield [("view_shopping_list", {})]
            ids = {e["name"]: e["entry_id"] for e in listed[0]["entries"]}
            done = yield [("put_away_purchase", {"entry_id": ids[n], "expires": d, "location": places[n]})
                          for n, d in bought]
            return "Put away: " + ", ".join(f"{d['name']} in the {d['location']} ({d['item_id']})" for d in done) + "."

        says = " and ".join(f"the {n} (good until {_say_date(rng, d)}, goes in the {places[n]})" for n, d in bought)
        them = "it" if len(bought) == 1 else "them"
        return Request(rng.choice(["I bought {s} from the shopping list. Please put {t} away.",
                                   "Got {s} from my list; move {t} into the pantry."]).format(s=says, t=them), plan())

    def ask_stock(self, rng: random.Random) -> Request | None:
        good = rng.choice(sorted(_GOODS))
        unit, sizes, _, place = _GOODS[good]
        quantity, expires = rng.choice(sizes), self._expiry(good)
        got = _amount(quantity, unit)

        def plan() -> Plan:
            done = yield [("add_pantry_item", {"name": good, "quantity": quantity, "unit": unit, "expires": expires,
                                               "location": place})]
            return f"Added {got} of {good} to the {place} as {done[0]['item_id']}, good until {expires}."

        said = _say_date(rng, expires)
        ask = rng.choice(["I picked up {q} of {g}, best before {d}. It goes in the {p}.",
                          "Add {q} of {g} to the {p}; it keeps until {d}."])
        return Request(ask.format(q=got, g=good, d=said, p=place), plan(), partial=(
            f"I picked up {got} of {good} for the {place}. Please add it.",
            "Sure. What is its best-before date?", rng.choice(["{d}.", "It's good until {d}."]).format(d=said)))

    def ask_shelf(self, rng: random.Random) -> Request | None:
        place = rng.choice(LOCATIONS)

        def plan() -> Plan:
            found = yield [("list_pantry_items", {"location": place})]
            rows = found[0]["items"]
            return f"In the {place}: {_listing(rows)}." if rows else f"The {place} is empty."

        return Request(rng.choice(["What's in the {p}?", "Can you tell me what I have in the {p}?",
                                   "List everything in the {p}, please."]).format(p=place), plan())
