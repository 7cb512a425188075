"""A city bike share: docking stations, bikes, riders with prepaid wallets, rides (training environment)."""

from __future__ import annotations

import random
from typing import Any

from stages.synthetic.environments.base import (
    Environment,
    Plan,
    Request,
    ToolError,
    boolean,
    integer,
    number,
    pick,
    string,
    tool,
)

UNLOCK_FEE, PER_MINUTE, MIN_BALANCE = 1.0, 0.12, 3.0
_AREAS = ["Old Harbor", "Millbrook", "Canal Quarter", "Lantern Hill", "Westfield", "Stonebridge"]
_STATIONS = ["Ferry Steps", "Clocktower Square", "Tannery Lane", "Pike Market", "Gasworks Park", "Linden Gate",
             "Foundry Yard", "Weaver's Bridge", "Orchard Row", "Signal Point", "Mill Pond", "Cobbler Street"]
_RIDERS = ["Freya Holm", "Kofi Mensah", "Lena Vogt", "Arjun Mehta", "Paula Reyes", "Yusuf Demir", "Tess Munro",
           "Bruno Salas", "Nia Campbell"]
_PROBLEMS = ["a flat front tyre", "brakes that barely work", "a loose chain", "a broken bell", "a bent pedal",
             "a seat that won't stay up"]


def _fare(minutes: int) -> float:
    return round(UNLOCK_FEE + PER_MINUTE * minutes, 2)


class BikeShare(Environment):
    name = "bike_share"
    title = "city bike share"
    related_domains = ("rideshare",)

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        areas = rng.sample(_AREAS, 4)
        stations: dict[str, Any] = {}
        bikes: dict[str, Any] = {}
        for i, place in enumerate(rng.sample(_STATIONS, 7)):
            sid, docks = f"S-{12 + i * 5}", rng.choice([6, 8, 10])
            stations[sid] = {"name": place, "area": areas[i % 4], "docks": docks, "bikes": []}
            for _ in range(rng.randint(0, docks)):
                bid = f"BK-{301 + len(bikes)}"
                stations[sid]["bikes"].append(bid)
                bikes[bid] = {"station": sid, "repair": rng.random() < 0.12, "reserved_by": None}
        riders = {f"R-{704 + i * 11}": {"name": n, "balance": rng.choice([0.8, 2.5, 6.0, 12.4, 20.0, 31.75]),
                                        "ride": None, "reservation": None}
                  for i, n in enumerate(rng.sample(_RIDERS, 5))}
        rides: dict[str, Any] = {}
        for rid in sorted(riders):
            for _ in range(rng.randint(0, 3)):
                minutes, ends = rng.randint(4, 55), rng.sample(sorted(stations), 2)
                rides[f"RD-{900 + len(rides)}"] = {"rider": rid, "bike": rng.choice(sorted(bikes)), "from": ends[0],
                                                   "to": ends[1], "minutes": minutes, "cost": _fare(minutes)}
        # A couple of riders are out on a bike when the session starts, so rides can be ended.
        for rid in rng.sample(sorted(riders), 2):
            sid = pick(rng, sorted(s for s, v in stations.items() if v["bikes"]))
            if sid is None:
                break
            bid, ride_id = stations[sid]["bikes"].pop(), f"RD-{900 + len(rides)}"
            bikes[bid].update(station=None, repair=False)
            rides[ride_id] = {"rider": rid, "bike": bid, "from": sid, "to": None, "minutes": None, "cost": None}
            riders[rid]["ride"] = ride_id
        # One rider already holds a bike, so a reservation can be cancelled from the start.
        rid = rng.choice(sorted(r for r, v in riders.items() if not v["ride"]))
        bid = pick(rng, sorted(b for b, v in bikes.items() if v["station"] and not v["repair"]))
        reservations = {}
        if bid is not None:
            reservations["RS-39"] = {"rider": rid, "bike": bid, "minutes": 15}
            bikes[bid]["reserved_by"] = riders[rid]["reservation"] = "RS-39"
        return {"stations": stations, "bikes": bikes, "riders": riders, "rides": rides, "reservations": reservations,
                "next_ride": 960, "next_reservation": 40}

    # ------------------------------------------------------------------ functions

    @tool("Finds docking stations, optionally in one area or only those with a bike ready to ride.",
          "find bike stations", area=string("The neighborhood.", enum=_AREAS, optional=True),
          with_bikes=boolean("Only stations with at least one bike ready to ride.", default=False))
    def find_bike_stations(self, with_bikes: bool, area: str | None = None) -> dict[str, Any]:
        out = []
        for sid, st in self.state["stations"].items():
            ready = len(self._ready(sid))
            if (area is None or st["area"] == area) and (ready or not with_bikes):
                out.append({"station_id": sid, "name": st["name"], "area": st["area"], "bikes_ready": ready,
                            "free_docks": st["docks"] - len(st["bikes"])})
        return {"stations": out}

    @tool("Returns a station's docks and each docked bike with its state (ready, reserved or in repair).",
          "check a station", station_id=string("The station's ID, e.g. 'S-17'."))
    def get_station_status(self, station_id: str) -> dict[str, Any]:
        st = self._one("stations", station_id)
        bikes = [{"bike_id": b, "state": self._bike_state(b)} for b in st["bikes"]]
        return {"station_id": station_id, "name": st["name"], "area": st["area"], "bikes": bikes,
                "free_docks": st["docks"] - len(st["bikes"])}

    @tool(f"Unlocks a docked bike for a rider. Needs a wallet balance of at least {MIN_BALANCE:.2f}; a bike in "
          "repair or reserved by someone else cannot be taken. Starting a ride ends the rider's reservation.",
          "start a bike ride", rider_id=string("The rider's ID, e.g. 'R-715'."),
          bike_id=string("The bike's ID, e.g. 'BK-304'."))
    def start_bike_ride(self, rider_id: str, bike_id: str) -> dict[str, Any]:
        rider, bike, state = self._free_rider(rider_id), self._one("bikes", bike_id), self._bike_state(bike_id)
        if state != "ready" and not (state == "reserved" and rider["reservation"] == bike["reserved_by"]):
            raise ToolError(f"{bike_id} is {state}")
        self._release(rider)
        ride_id, station = f"RD-{self.state['next_ride']}", bike["station"]
        self.state["next_ride"] += 1
        self.state["stations"][station]["bikes"].remove(bike_id)
        bike["station"], rider["ride"] = None, ride_id
        self.state["rides"][ride_id] = {"rider": rider_id, "bike": bike_id, "from": station, "to": None,
                                        "minutes": None, "cost": None}
        return {"ride_id": ride_id, "bike_id": bike_id, "from": station}

    @tool(f"Ends a ride by docking the bike at a station with a free dock. Charges {UNLOCK_FEE:.2f} plus "
          f"{PER_MINUTE:.2f} per minute to the wallet.", "end a bike ride",
          ride_id=string("The ride's ID, e.g. 'RD-905'."), station_id=string("Where the bike is docked."),
          minutes=integer("How long the ride lasted, in minutes.", minimum=1, maximum=600))
    def end_bike_ride(self, ride_id: str, station_id: str, minutes: int) -> dict[str, Any]:
        ride, st = self.state["rides"].get(ride_id), self._one("stations", station_id)
        if ride is None or ride["to"] is not None:
            raise ToolError(f"no ride in progress with ID {ride_id}")
        if len(st["bikes"]) >= st["docks"]:
            raise ToolError(f"{station_id} has no free dock")
        cost, rider = _fare(minutes), self.state["riders"][ride["rider"]]
        ride.update(to=station_id, minutes=minutes, cost=cost)
        st["bikes"].append(ride["bike"])
        self.state["bikes"][ride["bike"]]["station"] = station_id
        rider["ride"], rider["balance"] = None, round(rider["balance"] - cost, 2)
        return {"ride_id": ride_id, "cost": cost, "balance": rider["balance"]}

    @tool("Adds money to a rider's wallet.", "top up a wallet", rider_id=string("The rider's ID."),
          amount=number("The amount to add.", minimum=1, maximum=200))
    def top_up_wallet(self, rider_id: str, amount: float) -> dict[str, Any]:
        rider = self._one("riders", rider_id)
        rider["balance"] = round(rider["balance"] + amount, 2)
        return {"rider_id": rider_id, "balance": rider["balance"]}

    @tool("Returns a rider's name, wallet balance, ride in progress, reservation and past rides.",
          "look up a rider account", rider_id=string("The rider's ID."))
    def get_rider_account(self, rider_id: str) -> dict[str, Any]:
        rider = self._one("riders", rider_id)
        past = [{"ride_id": k, "from": v["from"], "to": v["to"], "minutes": v["minutes"], "cost": v["cost"]}
                for k, v in self.state["rides"].items() if v["rider"] == rider_id and v["to"] is not None]
        return {"rider_id": rider_id, **rider, "past_rides": past}

    @tool("Flags a docked bike as damaged so nobody can take it until it is repaired; any reservation on it ends.",
          "report a damaged bike", bike_id=string("The bike's ID."),
          problem=string("What is wrong, e.g. 'flat rear tyre'."))
    def report_damaged_bike(self, bike_id: str, problem: str) -> dict[str, Any]:
        bike, state = self._one("bikes", bike_id), self._bike_state(bike_id)
        if state in ("out on a ride", "in repair"):
            raise ToolError(f"{bike_id} is {state}; only a docked bike that is not in repair can be reported")
        held = bike["reserved_by"]
        if held:
            self._release(self.state["riders"][self.state["reservations"][held]["rider"]])
        bike["repair"] = True
        return {"bike_id": bike_id, "station_id": bike["station"], "problem": problem, "reservation_ended": held}

    @tool(f"Holds a ready bike for a rider for some minutes. One reservation per rider; needs a balance of "
          f"{MIN_BALANCE:.2f} and no ride in progress.", "reserve a bike",
          rider_id=string("The rider's ID."), bike_id=string("The bike's ID."),
          minutes=integer("How long to hold it.", minimum=5, maximum=30, optional=True, default=15))
    def reserve_bike(self, rider_id: str, bike_id: str, minutes: int) -> dict[str, Any]:
        rider, bike = self._free_rider(rider_id), self._one("bikes", bike_id)
        if rider["reservation"]:
            raise ToolError(f"{rider_id} already holds reservation {rider['reservation']}")
        if self._bike_state(bike_id) != "ready":
            raise ToolError(f"{bike_id} is {self._bike_state(bike_id)}")
        res_id = f"RS-{self.state['next_reservation']}"
        self.state["next_reservation"] += 1
        self.state["reservations"][res_id] = {"rider": rider_id, "bike": bike_id, "minutes": minutes}
        bike["reserved_by"], rider["reservation"] = res_id, res_id
        return {"reservation_id": res_id, "bike_id": bike_id, "station_id": bike["station"], "minutes": minutes}

    @tool("Cancels a bike reservation.", "cancel a bike reservation",
          reservation_id=string("The reservation's ID, e.g. 'RS-41'."))
    def cancel_bike_reservation(self, reservation_id: str) -> dict[str, Any]:
        res = self.state["reservations"].get(reservation_id)
        if res is None:
            raise ToolError(f"no active reservation with ID {reservation_id}")
        self._release(self.state["riders"][res["rider"]])
        return {"cancelled": reservation_id, "bike_id": res["bike"]}

    @tool("Quotes the fare of a ride of a given length.", "quote a ride fare",
          minutes=integer("The ride's length in minutes.", minimum=1, maximum=600))
    def quote_ride_fare(self, minutes: int) -> dict[str, Any]:
        return {"minutes": minutes, "fare": _fare(minutes)}

    # ------------------------------------------------------------------ lookups

    def _one(self, table: str, key: str) -> dict[str, Any]:
        if key not in self.state[table]:
            raise ToolError(f"no {table[:-1]} with ID {key}")
        return self.state[table][key]

    def _bike_state(self, bike_id: str) -> str:
        bike = self.state["bikes"][bike_id]
        return ("out on a ride" if bike["station"] is None else "in repair" if bike["repair"]
                else "reserved" if bike["reserved_by"] else "ready")

    def _ready(self, station_id: str) -> list[str]:
        return [b for b in self.state["stations"][station_id]["bikes"] if self._bike_state(b) == "ready"]

    def _free_rider(self, rider_id: str) -> dict[str, Any]:
        """A rider who may take or hold a bike: no ride in progress and enough money in the wallet."""
        rider = self._one("riders", rider_id)
        if rider["ride"]:
            raise ToolError(f"{rider_id} is already on ride {rider['ride']}")
        if rider["balance"] < MIN_BALANCE:
            raise ToolError(f"wallet balance {rider['balance']:.2f} is below the {MIN_BALANCE:.2f} minimum")
        return rider

    def _release(self, rider: dict[str, Any]) -> None:
        res_id = rider["reservation"]
        if res_id:
            self.state["bikes"][self.state["reservations"].pop(res_id)["bike"]]["reserved_by"] = None
            rider["reservation"] = None

    def _can_ride(self, rider_id: str) -> bool:
        rider = self.state["riders"][rider_id]
        return rider["balance"] >= MIN_BALANCE and not rider["ride"]

    # ------------------------------------------------------------------ requests

    def ask_ride_in_area(self, rng: random.Random) -> Request | None:
        area = pick(rng, sorted({v["area"] for s, v in self.state["stations"].items() if self._ready(s)}))
        rider_id = pick(rng, sorted(r for r in self.state["riders"] if self._can_ride(r)))
        if rider_id is None or area is None:
            return None

        def plan() -> Plan:
            found = yield [("find_bike_stations", {"area": area, "with_bikes": True})]
            station = found[0]["stations"][0]
            status = yield [("get_station_status", {"station_id": station["station_id"]})]
            bike = next(b["bike_id"] for b in status[0]["bikes"] if b["state"] == "ready")
            ride = yield [("start_bike_ride", {"rider_id": rider_id, "bike_id": bike})]
            return f"Bike {bike} at {station['name']} is unlocked for you; ride {ride[0]['ride_id']} has started."

        ask = rng.choice(["I'm in {a}. Find me a bike there and unlock it, rider ID {r}.",
                          "Rider {r} here, I need a bike somewhere in {a}. Please start a ride for me.",
                          "Can you unlock any free bike in {a} for rider {r}?"])
        return Request(ask.format(a=area, r=rider_id), plan(), partial=(
            rng.choice(["I'm in {a}. Find me a bike there and unlock it.", "I need a bike in {a}, please unlock one."])
            .format(a=area), "Happy to. What is your rider ID?", rng.choice(["{r}.", "It's {r}."]).format(r=rider_id)))

    def ask_end_ride(self, rng: random.Random) -> Request | None:
        rider_id = pick(rng, sorted(r for r, v in self.state["riders"].items() if v["ride"]))
        station_id = pick(rng, sorted(s for s, v in self.state["stations"].items() if len(v["bikes"]) < v["docks"]))
        if rider_id is None or station_id is None:
            return None
        st, minutes = self.state["stations"][station_id], rng.randint(3, 70)

        def plan() -> Plan:
            account, found = yield [("get_rider_account", {"rider_id": rider_id}),
                                    ("find_bike_stations", {"area": st["area"]})]
            target = next(s["station_id"] for s in found["stations"] if s["name"] == st["name"])
            done = yield [("end_bike_ride", {"ride_id": account["ride"], "station_id": target, "minutes": minutes})]
            return (f"Ride {account['ride']} is closed at {st['name']}: {done[0]['cost']:.2f} for {minutes} minutes, "
                    f"leaving {done[0]['balance']:.2f} in your wallet.")

        ask = rng.choice(["I just docked at {s} in {a} after {m} minutes. End my ride, rider {r}.",
                          "Rider {r}: finish my ride please, I rode {m} minutes and parked at {s} ({a})."])
        return Request(ask.format(s=st["name"], a=st["area"], m=minutes, r=rider_id), plan(), partial=(
            f"Rider {rider_id}: please end my ride, the bike is at {st['name']} in {st['area']}.",
            "Sure. How many minutes did the ride last?", rng.choice(["{m} minutes.", "It was {m} minutes."])
            .format(m=minutes)))

    def ask_top_up(self, rng: random.Random) -> Request | None:
        rider_id = pick(rng, sorted(self.state["riders"]))
        amount = rng.choice([5, 10, 15, 20, 25, 40])

        def plan() -> Plan:
            done = yield [("top_up_wallet", {"rider_id": rider_id, "amount": amount})]
            return f"Added {amount:.2f}; the wallet of {rider_id} now holds {done[0]['balance']:.2f}."

        ask = rng.choice(["Put {n} on my wallet, rider {r}.", "Top up rider {r}'s wallet by {n}, please."])
        return Request(ask.format(n=amount, r=rider_id), plan(), partial=(
            f"I'd like to top up my wallet. I'm rider {rider_id}.", "How much would you like to add?",
            rng.choice(["{n}, please.", "Add {n}."]).format(n=amount)))

    def ask_afford(self, rng: random.Random) -> Request | None:
        rider_id, minutes = pick(rng, sorted(self.state["riders"])), rng.choice([15, 20, 30, 45, 60, 90])

        def plan() -> Plan:
            account, quote = yield [("get_rider_account", {"rider_id": rider_id}),
                                    ("quote_ride_fare", {"minutes": minutes})]
            fare, balance = quote["fare"], account["balance"]
            verdict = "that covers it" if balance >= max(fare, MIN_BALANCE) else "you'd want to top up first"
            return f"A {minutes}-minute ride costs {fare:.2f} and your balance is {balance:.2f}, so {verdict}."

        ask = rng.choice(["Rider {r}: can my wallet cover a {m}-minute ride?",
                          "What would {m} minutes of riding cost, and is my balance enough? I'm {r}."])
        return Request(ask.format(r=rider_id, m=minutes), plan())

    def ask_report_damage(self, rng: random.Random) -> Request | None:
        bike_id = pick(rng, sorted(b for b, v in self.state["bikes"].items() if v["station"] and not v["repair"]))
        if bike_id is None:
            return None
        station_id, problem = self.state["bikes"][bike_id]["station"], rng.choice(_PROBLEMS)

        def plan() -> Plan:
            yield [("report_damaged_bike", {"bike_id": bike_id, "problem": problem})]
            status = yield [("get_station_status", {"station_id": station_id})]
            ready = [b["bike_id"] for b in status[0]["bikes"] if b["state"] == "ready"]
            others = ", ".join(ready) if ready else "none right now"
            return f"Reported {bike_id} for repair. Bikes ready at {status[0]['name']}: {others}."

        ask = rng.choice(["Bike {b} at station {s} has {p}. Report it and tell me which bikes there I can use.",
                          "{b} (docked at {s}) has {p}; please flag it and list the other ready bikes at {s}."])
        return Request(ask.format(b=bike_id, s=station_id, p=problem), plan())

    def ask_reserve(self, rng: random.Random) -> Request | None:
        rider_id = pick(rng, sorted(r for r, v in self.state["riders"].items()
                                    if self._can_ride(r) and not v["reservation"]))
        station_id = pick(rng, sorted(s for s in self.state["stations"] if self._ready(s)))
        if rider_id is None or station_id is None:
            return None
        minutes = rng.choice([5, 10, 20, 30])

        def plan() -> Plan:
            status = yield [("get_station_status", {"station_id": station_id})]
            bike = next(b["bike_id"] for b in status[0]["bikes"] if b["state"] == "ready")
            held = yield [("reserve_bike", {"rider_id": rider_id, "bike_id": bike, "minutes": minutes})]
            return f"Bike {bike} at {status[0]['name']} is held for you for {minutes} minutes " \
                   f"(reservation {held[0]['reservation_id']})."

        ask = rng.choice(["Hold a bike for me at station {s} for {m} minutes. Rider {r}.",
                          "Rider {r}: please reserve any ready bike at {s} for {m} minutes."])
        return Request(ask.format(s=station_id, m=minutes, r=rider_id), plan(), partial=(
            f"Rider {rider_id} here, please reserve a bike at station {station_id}.",
            "Sure. For how many minutes should I hold it (5 to 30)?", f"{minutes} minutes."))

    def ask_cancel_reservation(self, rng: random.Random) -> Request | None:
        rider_id = pick(rng, sorted(r for r, v in self.state["riders"].items() if v["reservation"]))
        if rider_id is None:
            return None

        def plan() -> Plan:
            account = yield [("get_rider_account", {"rider_id": rider_id})]
            done = yield [("cancel_bike_reservation", {"reservation_id": account[0]["reservation"]})]
            return f"Reservation {done[0]['cancelled']} is cancelled; bike {done[0]['bike_id']} is free again."

        return Request(rng.choice(["I won't need my bike after all, cancel my reservation. Rider {r}.",
                                   "Please drop the reservation of rider {r}."]).format(r=rider_id), plan())

    def ask_ride_history(self, rng: random.Random) -> Request | None:
        rider_id = pick(rng, sorted(self.state["riders"]))

        def plan() -> Plan:
            account = yield [("get_rider_account", {"rider_id": rider_id})]
            past = account[0]["past_rides"]
            if not past:
                return f"{account[0]['name']} has no finished rides yet."
            spent, minutes = sum(r["cost"] for r in past), sum(r["minutes"] for r in past)
            rides = "1 ride" if len(past) == 1 else f"{len(past)} rides"
            return f"{account[0]['name']} has taken {rides}: {minutes} minutes in all, costing {spent:.2f}."

        return Request(rng.choice(["How many rides have I taken, and what did they cost me? Rider {r}.",
                                   "Summarize the ride history of rider {r}."]).format(r=rider_id), plan())
