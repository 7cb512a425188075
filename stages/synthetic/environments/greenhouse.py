"""A greenhouse controller: planting beds with sensors, irrigation, vents, grow lamps and a harvest log (held out)."""

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

_CROPS = ["basil", "lettuce", "cherry tomato", "spinach", "chili pepper", "strawberry", "kale", "cucumber"]
_VENTS = ["east roof", "west roof", "south wall", "north wall"]
_PAIRS = [("east roof", "west roof"), ("south wall", "north wall")]
SATURATED = 85  # soil moisture (%) at and above which watering is refused
WALL_MAX = 50  # the wall vents' hinges open no further than this (%)


class Greenhouse(Environment):
    name = "greenhouse"
    title = "greenhouse controller"
    heldout = True

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        beds = {}
        empty = set(rng.sample(range(6), rng.randint(1, 2)))
        for i in range(6):
            crop = None if i in empty else rng.choice(_CROPS)
            beds[f"BED-{i + 1}"] = {"crop": crop, "ready_kg": 0.0 if crop is None else round(rng.uniform(0.5, 6), 1),
                                    "moisture": rng.randint(18, 80), "base_temp": round(rng.uniform(20, 29), 1),
                                    "alert_below": rng.choice([20, 25, 30]), "lamp_on": False, "lamp_start": 0,
                                    "lamp_hours": 0}
        harvests = [{"entry_id": f"HV-{701 + n}", "bed_id": f"BED-{rng.randint(1, 6)}", "crop": rng.choice(_CROPS),
                     "kg": round(rng.uniform(0.4, 5), 1)} for n in range(rng.randint(2, 4))]
        vents = {v: rng.choice([0, 10, 20, 30]) for v in _VENTS}
        return {"beds": beds, "vents": vents, "harvests": harvests, "next_harvest": 701 + len(harvests)}

    # ------------------------------------------------------------------ functions

    @tool("Lists the planting beds: crop, soil moisture and kilograms ready to pick.", "list the planting beds",
          status=string("Which beds to list.", enum=["all", "planted", "empty"], optional=True, default="all"))
    def list_planting_beds(self, status: str) -> dict[str, Any]:
        beds = [{"bed_id": b, "crop": v["crop"], "soil_moisture": v["moisture"], "ready_kg": v["ready_kg"]}
                for b, v in self.state["beds"].items()
                if status == "all" or (v["crop"] is None) == (status == "empty")]
        return {"beds": beds}

    @tool("Reads a bed's sensors: soil moisture (%), air temperature (C), the moisture alert and the lamps.",
          "read a bed's sensors", bed_id=string("The bed's ID, e.g. 'BED-4'."))
    def read_bed_sensors(self, bed_id: str) -> dict[str, Any]:
        bed = self._bed(bed_id)
        lamps = f"on from {bed['lamp_start']:02d}:00 for {bed['lamp_hours']} h" if bed["lamp_on"] else "off"
        return {"bed_id": bed_id, "crop": bed["crop"], "soil_moisture": bed["moisture"],
                "temperature": self._temperature(bed), "alert_below": bed["alert_below"],
                "moisture_alert": bed["moisture"] < bed["alert_below"], "lamps": lamps}

    @tool(f"Runs a bed's drip irrigation: each minute raises soil moisture 2 points, up to 90%. Refused at "
          f"{SATURATED}% or more.", "water a bed", bed_id=string("The bed's ID."),
          minutes=integer("How long to water, in minutes.", minimum=1, maximum=30))
    def water_bed(self, bed_id: str, minutes: int) -> dict[str, Any]:
        bed = self._bed(bed_id)
        if bed["moisture"] >= SATURATED:
            raise ToolError(f"the soil of {bed_id} is already saturated ({bed['moisture']}%)")
        before, bed["moisture"] = bed["moisture"], min(90, bed["moisture"] + 2 * minutes)
        return {"bed_id": bed_id, "moisture_before": before, "soil_moisture": bed["moisture"]}

    @tool(f"Opens or closes one vent to a percentage (0 closes it). Wall vents open at most {WALL_MAX}%.",
          "open or close a vent", vent=string("Which vent.", enum=_VENTS),
          percent=integer("How far open, in percent.", minimum=0, maximum=100))
    def set_vent_opening(self, vent: str, percent: int) -> dict[str, Any]:
        if vent.endswith("wall") and percent > WALL_MAX:
            raise ToolError(f"the {vent} vent opens at most {WALL_MAX}%")
        self.state["vents"][vent] = percent
        return {"vent": vent, "open_percent": percent}

    @tool("Switches a bed's grow lamps on with a daily schedule, or off. A schedule must end by midnight.",
          "switch the grow lamps", bed_id=string("The bed's ID."),
          switch_on=boolean("True to switch on with the schedule, false to switch off.", optional=False),
          start_hour=integer("Hour the lamps come on each day (0-23).", minimum=0, maximum=23, optional=True,
                             default=6),
          hours=integer("How many hours a day they stay on.", minimum=1, maximum=18, optional=True, default=12))
    def set_grow_lamps(self, bed_id: str, switch_on: bool, start_hour: int, hours: int) -> dict[str, Any]:
        bed = self._bed(bed_id)
        if switch_on and bed["crop"] is None:
            raise ToolError(f"{bed_id} has no crop to light")
        if switch_on and start_hour + hours > 24:
            raise ToolError("the lamp schedule must end by midnight")
        bed.update(lamp_on=switch_on, lamp_start=start_hour if switch_on else 0, lamp_hours=hours if switch_on else 0)
        return {"bed_id": bed_id, "lamp_on": switch_on, "start_hour": bed["lamp_start"], "hours": bed["lamp_hours"]}

    @tool("Plants a crop in an empty bed.", "plant a crop", bed_id=string("The bed's ID."),
          crop=string("The crop to plant.", enum=_CROPS))
    def plant_bed(self, bed_id: str, crop: str) -> dict[str, Any]:
        bed = self._bed(bed_id)
        if bed["crop"] is not None:
            raise ToolError(f"{bed_id} already grows {bed['crop']}")
        bed.update(crop=crop, ready_kg=0.0)
        return {"bed_id": bed_id, "crop": crop}

    @tool("Logs a harvest from a planted bed (no more than is ready); clearing the bed empties it afterwards.",
          "log a harvest", bed_id=string("The bed's ID."),
          kg=number("How many kilograms were picked.", minimum=0.1),
          clear_bed=boolean("Empty the bed after this harvest.", default=False))
    def log_harvest(self, bed_id: str, kg: float, clear_bed: bool) -> dict[str, Any]:
        bed = self._bed(bed_id)
        if bed["crop"] is None:
            raise ToolError(f"{bed_id} is empty: nothing to harvest")
        if kg > bed["ready_kg"] + 1e-9:
            raise ToolError(f"only {bed['ready_kg']} kg is ready in {bed_id}")
        entry_id, crop = f"HV-{self.state['next_harvest']}", bed["crop"]
        self.state["next_harvest"] += 1
        self.state["harvests"].append({"entry_id": entry_id, "bed_id": bed_id, "crop": crop, "kg": kg})
        bed["ready_kg"] = round(bed["ready_kg"] - kg, 1)
        if clear_bed:
            bed.update(crop=None, ready_kg=0.0, lamp_on=False, lamp_start=0, lamp_hours=0)
        return {"entry_id": entry_id, "crop": crop, "kg": kg, "ready_kg_left": bed["ready_kg"], "cleared": clear_bed}

    @tool("Totals the harvest log in kilograms, per crop and overall.", "total the harvests",
          crop=string("Only this crop.", enum=_CROPS, optional=True))
    def get_harvest_totals(self, crop: str | None = None) -> dict[str, Any]:
        totals: dict[str, float] = {}
        for h in self.state["harvests"]:
            if crop is None or h["crop"] == crop:
                totals[h["crop"]] = round(totals.get(h["crop"], 0.0) + h["kg"], 2)
        return {"totals": dict(sorted(totals.items())), "total_kg": round(sum(totals.values()), 2)}

    @tool("Sets the soil moisture (%) below which a bed raises an alert.", "set a moisture alert",
          bed_id=string("The bed's ID."), below_percent=integer("The alert threshold, in percent.", minimum=5,
                                                                maximum=80))
    def set_moisture_alert(self, bed_id: str, below_percent: int) -> dict[str, Any]:
        bed = self._bed(bed_id)
        bed["alert_below"] = below_percent
        return {"bed_id": bed_id, "alert_below": below_percent, "soil_moisture": bed["moisture"],
                "moisture_alert": bed["moisture"] < below_percent}

    # ------------------------------------------------------------------ lookups

    def _bed(self, bed_id: str) -> dict[str, Any]:
        if bed_id not in self.state["beds"]:
            raise ToolError(f"no bed with ID {bed_id}")
        return self.state["beds"][bed_id]

    def _temperature(self, bed: dict[str, Any]) -> float:
        # Open vents cool every bed a little and lamps warm their own, so venting shows in the readings.
        vents = self.state["vents"].values()
        return round(bed["base_temp"] + (1.5 if bed["lamp_on"] else 0) - 0.05 * sum(vents) / len(vents), 1)

    def _beds(self, planted: bool) -> list[str]:
        return sorted(b for b, v in self.state["beds"].items() if (v["crop"] is not None) == planted)

    # ------------------------------------------------------------------ requests

    def ask_bed_status(self, rng: random.Random) -> Request | None:
        first, second = rng.sample(sorted(self.state["beds"]), 2)

        def plan() -> Plan:
            readings = yield [("read_bed_sensors", {"bed_id": first}), ("read_bed_sensors", {"bed_id": second})]
            lines = [f"{r['bed_id']} ({r['crop'] or 'empty'}): soil {r['soil_moisture']}%, {r['temperature']} C"
                     + (", below its moisture alert" if r["moisture_alert"] else "") for r in readings]
            return "; ".join(lines) + "."

        return Request(rng.choice(["How are {a} and {b} doing?", "Give me the sensor readings for {a} and {b}.",
                                   "What do the sensors in {a} and {b} say right now?"]).format(a=first, b=second),
                       plan())

    def ask_water(self, rng: random.Random) -> Request | None:
        bed_id = pick(rng, sorted(b for b, v in self.state["beds"].items() if v["moisture"] < SATURATED))
        if bed_id is None:
            return None
        minutes = rng.choice([5, 8, 10, 15, 20])

        def plan() -> Plan:
            done = yield [("water_bed", {"bed_id": bed_id, "minutes": minutes})]
            return f"Watered {bed_id} for {minutes} minutes: soil moisture went from {done[0]['moisture_before']}% " \
                   f"to {done[0]['soil_moisture']}%."

        return Request(rng.choice(["Water {b} for {m} minutes.", "Give {b} {m} minutes of water.",
                                   "Run the drip on {b} for {m} minutes, please."]).format(b=bed_id, m=minutes),
                       plan(), partial=(f"Please water {bed_id}.", "Sure. For how many minutes?",
                                        rng.choice(["{m} minutes.", "Make it {m} minutes."]).format(m=minutes)))

    def ask_water_driest(self, rng: random.Random) -> Request | None:
        planted = [self.state["beds"][b] for b in self._beds(planted=True)]
        # The plan waters the driest planted bed, so that bed must still take water.
        if not planted or min(v["moisture"] for v in planted) >= SATURATED:
            return None
        minutes = rng.choice([10, 12, 15])

        def plan() -> Plan:
            found = yield [("list_planting_beds", {"status": "planted"})]
            driest = min(found[0]["beds"], key=lambda b: b["soil_moisture"])
            done = yield [("water_bed", {"bed_id": driest["bed_id"], "minutes": minutes})]
            return (f"The driest planted bed was {driest['bed_id']} ({driest['crop']}, {done[0]['moisture_before']}%);"
                    f" after {minutes} minutes it is at {done[0]['soil_moisture']}%.")

        return Request(rng.choice(["Find the driest planted bed and water it for {m} minutes.",
                                   "Whichever bed with a crop is driest, give it {m} minutes of water."]).format(
            m=minutes), plan())

    def ask_vents(self, rng: random.Random) -> Request | None:
        pair = rng.choice(_PAIRS)
        percent = rng.choice([20, 30, 40, 50] if pair[0].endswith("wall") else [30, 50, 60, 75, 100])
        bed_id = rng.choice(sorted(self.state["beds"]))

        def plan() -> Plan:
            yield [("set_vent_opening", {"vent": v, "percent": percent}) for v in pair]
            reading = yield [("read_bed_sensors", {"bed_id": bed_id})]
            return f"The {pair[0]} and {pair[1]} vents are {percent}% open; {bed_id} now reads " \
                   f"{reading[0]['temperature']} C."

        vents = f"the {pair[0]} and {pair[1]} vents"
        return Request(rng.choice(["It's getting warm. Open {v} to {p}% and tell me the temperature in {b}.",
                                   "Set {v} to {p}% open, then read the temperature at {b}."]).format(
            v=vents, p=percent, b=bed_id), plan(), partial=(
            f"Open {vents} and tell me the temperature in {bed_id} afterwards.", "How far should they open (percent)?",
            rng.choice(["{p}%.", "{p} percent, please."]).format(p=percent)))

    def ask_lamps(self, rng: random.Random) -> Request | None:
        bed_id = pick(rng, self._beds(planted=True))
        if bed_id is None:
            return None
        lit = self.state["beds"][bed_id]["lamp_on"]
        hours = rng.choice([8, 10, 12, 14, 16])
        start = rng.randint(4, 24 - hours)  # the lamps must be off by midnight

        def plan() -> Plan:
            if lit:
                yield [("set_grow_lamps", {"bed_id": bed_id, "switch_on": False})]
                return f"The grow lamps over {bed_id} are off."
            done = yield [("set_grow_lamps", {"bed_id": bed_id, "switch_on": True, "start_hour": start,
                                              "hours": hours})]
            return f"The lamps over {bed_id} now come on at {done[0]['start_hour']:02d}:00 for {done[0]['hours']} " \
                   "hours a day."

        if lit:
            return Request(rng.choice(["Switch off the grow lamps over {b}.", "Turn the lamps at {b} off."]).format(
                b=bed_id), plan())
        text = rng.choice(["Turn on the grow lamps over {b} from {s}:00 for {h} hours a day.",
                           "Give {b} {h} hours of lamp light daily, starting at {s}:00."])
        # No partial variant: `hours` has a default, so a request without it can be done at once.
        return Request(text.format(b=bed_id, s=f"{start:02d}", h=hours), plan())

    def ask_plant(self, rng: random.Random) -> Request | None:
        if not self._beds(planted=False):
            return None
        crop = rng.choice(_CROPS)

        def plan() -> Plan:
            found = yield [("list_planting_beds", {"status": "empty"})]
            done = yield [("plant_bed", {"bed_id": found[0]["beds"][0]["bed_id"], "crop": crop})]
            return f"Planted {crop} in {done[0]['bed_id']}."

        # The first empty bed the listing gives: a request that allowed any bed would have more than
        # one right end state, and the evaluation compares against one.
        return Request(rng.choice(["Plant {c} in the first empty bed.", "Put {c} in the first free bed.",
                                   "Find the first empty bed and sow {c} there."]).format(c=crop), plan(), partial=(
            "Please plant something new in the first empty bed.", "Sure. Which crop should I plant?",
            rng.choice(["{c}.", "Let's do {c}."]).format(c=crop)))

    def ask_harvest(self, rng: random.Random) -> Request | None:
        bed_id = pick(rng, sorted(b for b, v in self.state["beds"].items() if v["crop"] and v["ready_kg"] >= 0.1))
        if bed_id is None:
            return None
        crop = self.state["beds"][bed_id]["crop"]
        kg = rng.randint(1, round(self.state["beds"][bed_id]["ready_kg"] * 10)) / 10

        def plan() -> Plan:
            yield [("log_harvest", {"bed_id": bed_id, "kg": kg})]
            totals = yield [("get_harvest_totals", {"crop": crop})]
            return f"Logged {kg} kg of {crop} from {bed_id}. The {crop} harvest now totals {totals[0]['total_kg']} kg."

        return Request(rng.choice(["We picked {k} kg of {c} from {b}. Log it and tell me our {c} total.",
                                   "Log a harvest: {k} kg of {c}, {b}. How much {c} is that in all?"]).format(
            k=kg, c=crop, b=bed_id), plan())

    def ask_clear_bed(self, rng: random.Random) -> Request | None:
        bed_id = pick(rng, sorted(b for b, v in self.state["beds"].items() if v["crop"] and v["ready_kg"] >= 0.1))
        if bed_id is None:
            return None

        def plan() -> Plan:
            found = yield [("list_planting_beds", {"status": "planted"})]
            bed = next(b for b in found[0]["beds"] if b["bed_id"] == bed_id)
            done = yield [("log_harvest", {"bed_id": bed_id, "kg": bed["ready_kg"], "clear_bed": True})]
            h = done[0]
            return f"Harvested the last {h['kg']} kg of {h['crop']} from {bed_id} ({h['entry_id']}); the bed is empty."

        return Request(rng.choice(["Pick everything that's ready in {b} and clear the bed.",
                                   "We're done with {b}: log whatever is ready as harvested and empty it."]).format(
            b=bed_id), plan())

    def ask_alert(self, rng: random.Random) -> Request | None:
        bed_id = rng.choice(sorted(self.state["beds"]))
        threshold = rng.choice([20, 25, 30, 35, 40, 45])

        def plan() -> Plan:
            done = yield [("set_moisture_alert", {"bed_id": bed_id, "below_percent": threshold})]
            state = "is below it now" if done[0]["moisture_alert"] else "is not below it"
            return f"{bed_id} alerts below {threshold}% from now on; its soil ({done[0]['soil_moisture']}%) {state}."

        return Request(rng.choice(["Alert me when {b} drops below {t}% moisture.",
                                   "Set the moisture alert of {b} to {t}%."]).format(b=bed_id, t=threshold), plan(),
                       partial=(f"I want a moisture alert on {bed_id}.", "At what soil moisture should it alert?",
                                rng.choice(["Below {t}%.", "{t} percent."]).format(t=threshold)))
