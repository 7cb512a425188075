"""A smart home hub: rooms with lights, thermostats, door locks and blinds, and saved scenes (training environment)."""

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

KINDS = ["light", "thermostat", "lock", "blinds"]
MODES = ["heat", "cool", "auto", "off"]
LOW, HIGH = 10, 30  # the thermostat range the hub accepts, in degrees Celsius
_ROOMS = ["living room", "kitchen", "bedroom", "study", "bathroom", "nursery", "guest room", "dining room"]
_LIGHTS = ["ceiling light", "pendant light", "strip light", "wall sconce", "floor lamp", "reading lamp", "desk lamp"]
_BACK_DOORS = ["back door", "patio door", "garden door"]
_SCENES = ["movie night", "wake up", "dinner time", "reading hour", "lazy sunday", "bedtime", "focus", "guests over"]
# What a scene remembers of each kind of device (locks are never part of a scene).
_SCENE_KEYS = {"light": ("on", "brightness"), "blinds": ("position",), "thermostat": ("target", "mode")}


def _deg(value: float) -> str:
    return f"{value:g}°C"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _blinds(position: int) -> str:
    return {0: "fully closed", 100: "fully open"}.get(position, f"{position}% open")


class SmartHome(Environment):
    name = "smart_home"
    title = "smart home hub"
    related_domains = ("smart_home",)

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        rooms = ["hallway", *rng.sample(_ROOMS, rng.randint(3, 4))]
        devices: dict[str, Any] = {}

        def add(room: str, name: str, kind: str, **settings: Any) -> None:
            devices[f"D-{11 + len(devices) * 2}"] = {"name": name, "room": room, "kind": kind, **settings}

        for room in rooms:
            # Lamps belong in rooms where people sit, not in the hallway or the bathroom.
            fits = _LIGHTS[:4] if room in ("hallway", "bathroom") else _LIGHTS
            for light in rng.sample(fits, 1 if room == "hallway" else rng.randint(1, 3)):
                add(room, light, "light", on=rng.random() < 0.5, brightness=rng.choice([20, 40, 60, 80, 100]))
            if room not in ("hallway", "bathroom") and rng.random() < 0.6:
                add(room, "blinds", "blinds", position=rng.choice([0, 25, 50, 100]))
            if room in ("living room", "bedroom", "study", "nursery") or room == rooms[1]:
                add(room, "thermostat", "thermostat", target=float(rng.choice([18, 19, 20, 20.5, 21, 22])),
                    mode=rng.choice(["heat", "heat", "auto", "off"]), current=round(rng.uniform(16.5, 23.5), 1))
        add("hallway", "front door", "lock", locked=rng.random() < 0.7, pin=f"{rng.randint(1000, 9999)}")
        if rng.random() < 0.7:
            add(rng.choice(rooms[1:]), rng.choice(_BACK_DOORS), "lock", locked=rng.random() < 0.5,
                pin=f"{rng.randint(1000, 9999)}")
        scenes = {}
        for scene in rng.sample(_SCENES, rng.randint(1, 2)):
            room = rng.choice(rooms[1:])
            scenes[scene] = {k: {"on": True, "brightness": rng.choice([10, 30, 50, 70])} if v["kind"] == "light"
                             else {key: v[key] for key in _SCENE_KEYS[v["kind"]]}
                             for k, v in devices.items() if v["room"] == room and v["kind"] in _SCENE_KEYS}
        return {"rooms": rooms, "devices": devices, "scenes": scenes}

    # ------------------------------------------------------------------ functions

    @tool("Lists the home's devices (ID, name, room, kind), optionally only one room's or one kind's.",
          "list the devices",
          room=string("Only devices in this room, e.g. 'kitchen'.", optional=True),
          kind=string("Only devices of this kind.", enum=KINDS, optional=True))
    def list_home_devices(self, room: str | None = None, kind: str | None = None) -> dict[str, Any]:
        if room is not None and room.lower() not in self.state["rooms"]:
            raise ToolError(f"no room named {room!r}; rooms: {', '.join(self.state['rooms'])}")
        rows = [{"device_id": k, "name": v["name"], "room": v["room"], "kind": v["kind"]}
                for k, v in self.state["devices"].items()
                if (room is None or v["room"] == room.lower()) and kind in (None, v["kind"])]
        return {"devices": rows, "total": len(rows)}

    @tool("Returns a device's current settings: on/off and brightness, target and room temperature, locked or not, "
          "blinds position.", "check a device's status",
          device_id=string("The device's ID, e.g. 'D-13'."))
    def get_device_state(self, device_id: str) -> dict[str, Any]:
        device = self._device(device_id)
        return {"device_id": device_id, **{k: v for k, v in device.items() if k != "pin"}}

    @tool("Turns a light on or off.", "switch a light on or off",
          device_id=string("The light's ID."), on=boolean("True to turn it on, false to turn it off.", optional=False))
    def switch_light(self, device_id: str, on: bool) -> dict[str, Any]:
        light = self._device(device_id, "light")
        changed = light["on"] != on
        light["on"] = on
        return {"device_id": device_id, "on": on, "changed": changed}

    @tool("Sets a light's brightness (and turns it on).", "dim a light",
          device_id=string("The light's ID."), brightness=integer("Brightness in percent.", minimum=1, maximum=100))
    def dim_light(self, device_id: str, brightness: int) -> dict[str, Any]:
        light = self._device(device_id, "light")
        light.update(on=True, brightness=brightness)
        return {"device_id": device_id, "on": True, "brightness": brightness}

    @tool(f"Sets a thermostat's target temperature ({LOW} to {HIGH} °C) and, optionally, its mode.",
          "set the heating",
          device_id=string("The thermostat's ID."), target=number("Target temperature in degrees Celsius."),
          mode=string("The mode to switch to.", enum=MODES, optional=True))
    def set_thermostat(self, device_id: str, target: float, mode: str | None = None) -> dict[str, Any]:
        thermostat = self._device(device_id, "thermostat")
        if not LOW <= target <= HIGH:
            raise ToolError(f"target must be between {LOW} and {HIGH} °C")
        thermostat["target"] = target
        if mode is not None:
            thermostat["mode"] = mode
        return {"device_id": device_id, "target": target, "mode": thermostat["mode"]}

    @tool("Locks a door.", "lock a door", device_id=string("The lock's ID."))
    def lock_door(self, device_id: str) -> dict[str, Any]:
        lock = self._device(device_id, "lock")
        if lock["locked"]:
            raise ToolError(f"the {lock['name']} is already locked")
        lock["locked"] = True
        return {"device_id": device_id, "locked": True}

    @tool("Unlocks a door; the door's PIN is required.", "unlock a door",
          device_id=string("The lock's ID."), pin=string("The door's 4-digit PIN."))
    def unlock_door(self, device_id: str, pin: str) -> dict[str, Any]:
        lock = self._device(device_id, "lock")
        if pin != lock["pin"]:
            raise ToolError("wrong PIN")
        if not lock["locked"]:
            raise ToolError(f"the {lock['name']} is already unlocked")
        lock["locked"] = False
        return {"device_id": device_id, "locked": False}

    @tool("Moves blinds: 0 is fully closed, 100 fully open.", "open or close the blinds",
          device_id=string("The blinds' ID."), position=integer("How far open, in percent.", minimum=0, maximum=100))
    def set_blinds(self, device_id: str, position: int) -> dict[str, Any]:
        self._device(device_id, "blinds")["position"] = position
        return {"device_id": device_id, "position": position}

    @tool("Saves the current lights, blinds and thermostats of a room (or the whole home) as a named scene.",
          "save a scene",
          scene_name=string("A new scene name, e.g. 'movie night'."),
          room=string("Only this room's devices; leave it out for the whole home.", optional=True))
    def save_home_scene(self, scene_name: str, room: str | None = None) -> dict[str, Any]:
        scene_name = scene_name.strip().lower()
        if scene_name in self.state["scenes"]:
            raise ToolError(f"a scene named {scene_name!r} already exists")
        rows = self.list_home_devices(room)["devices"]
        saved = {r["device_id"]: {k: self.state["devices"][r["device_id"]][k] for k in _SCENE_KEYS[r["kind"]]}
                 for r in rows if r["kind"] in _SCENE_KEYS}
        if not saved:
            raise ToolError("there is nothing to save: no lights, blinds or thermostats there")
        self.state["scenes"][scene_name] = saved
        return {"scene": scene_name, "devices": len(saved)}

    @tool("Applies a saved scene: every device in it goes back to its saved settings.", "activate a scene",
          scene_name=string("The scene's name."))
    def activate_home_scene(self, scene_name: str) -> dict[str, Any]:
        scene = self.state["scenes"].get(scene_name.strip().lower())
        if scene is None:
            raise ToolError(f"no scene named {scene_name!r}; scenes: {', '.join(sorted(self.state['scenes']))}")
        changed = []
        for device_id, settings in scene.items():
            device = self.state["devices"][device_id]
            if any(device[k] != v for k, v in settings.items()):
                changed.append(device_id)
            device.update(settings)
        return {"scene": scene_name.strip().lower(), "devices": len(scene), "changed": changed}

    # ------------------------------------------------------------------ lookups

    def _device(self, device_id: str, kind: str | None = None) -> dict[str, Any]:
        device = self.state["devices"].get(device_id)
        if device is None:
            raise ToolError(f"no device with ID {device_id}")
        if kind is not None and device["kind"] != kind:
            raise ToolError(f"{device_id} is a {device['kind']}, not a {kind}")
        return device

    def _of(self, kind: str, **where: Any) -> list[str]:
        return sorted(k for k, v in self.state["devices"].items()
                      if v["kind"] == kind and all(v[f] == x for f, x in where.items()))

    # ------------------------------------------------------------------ requests

    def ask_dim(self, rng: random.Random) -> Request | None:
        light_id = pick(rng, self._of("light"))
        if light_id is None:
            return None
        light, room = self.state["devices"][light_id]["name"], self.state["devices"][light_id]["room"]
        level = rng.choice([10, 25, 30, 40, 50, 60, 75, 90])

        def plan() -> Plan:
            found = yield [("list_home_devices", {"room": room, "kind": "light"})]
            target = next(d["device_id"] for d in found[0]["devices"] if d["name"] == light)
            done = yield [("dim_light", {"device_id": target, "brightness": level})]
            return f"The {light} in the {room} is on at {done[0]['brightness']}%."

        ask = rng.choice(["Set the {l} in the {r} to {b}%.", "Dim the {r} {l} to {b} percent, please.",
                          "Can you put the {l} in the {r} at {b}% brightness?"])
        return Request(ask.format(l=light, r=room, b=level), plan(), partial=(
            rng.choice(["Dim the {l} in the {r}, please.", "The {r} {l} is too bright."]).format(l=light, r=room),
            "Sure. What brightness would you like, in percent?", rng.choice(["{b}%.", "{b} percent."]).format(b=level)))

    def ask_room_lights(self, rng: random.Random) -> Request | None:
        room = pick(rng, sorted({v["room"] for v in self.state["devices"].values() if v["kind"] == "light"}))
        if room is None:
            return None
        on = rng.random() < 0.4
        word = "on" if on else "off"

        def plan() -> Plan:
            found = yield [("list_home_devices", {"room": room, "kind": "light"})]
            lights = found[0]["devices"]
            done = yield [("switch_light", {"device_id": d["device_id"], "on": on}) for d in lights]
            names = ", ".join(d["name"] for d in lights)
            flipped = sum(r["changed"] for r in done)
            return f"The {room} lights are {word} now ({names}); {_count(flipped, 'light')} had to be switched."

        return Request(rng.choice(["Turn {w} all the lights in the {r}.", "Switch every light in the {r} {w}.",
                                   "Could you turn the {r} lights {w}?"]).format(w=word, r=room), plan())

    def ask_heating(self, rng: random.Random) -> Request | None:
        device_id = pick(rng, self._of("thermostat"))
        if device_id is None:
            return None
        room = self.state["devices"][device_id]["room"]
        target = rng.choice([17, 18, 19, 19.5, 20, 20.5, 21, 22, 23, 24])
        # A thermostat that is off stays off unless asked, so the user then names a mode too.
        off = self.state["devices"][device_id]["mode"] == "off"
        mode = rng.choice(["heat", "auto"] if off else [None, None, "heat", "auto"])

        def plan() -> Plan:
            found = yield [("list_home_devices", {"room": room, "kind": "thermostat"})]
            args: dict[str, Any] = {"device_id": found[0]["devices"][0]["device_id"], "target": target}
            if mode is not None:
                args["mode"] = mode
            done = yield [("set_thermostat", args)]
            return f"The {room} thermostat is set to {_deg(done[0]['target'])}, mode {done[0]['mode']}."

        also = f" in {mode} mode" if mode else ""
        ask = rng.choice(["Set the {r} thermostat to {t} degrees{m}.", "I'd like the {r} at {t}°C{m}, please.",
                          "Change the {r} heating to {t} degrees{m}."])
        return Request(ask.format(r=room, t=f"{target:g}", m=also), plan(), partial=(
            f"Please change the {room} thermostat{also}.", "Of course. What temperature should it be set to?",
            rng.choice(["{t} degrees.", "{t}°C, please."]).format(t=f"{target:g}")))

    def ask_unlock(self, rng: random.Random) -> Request | None:
        lock_id = pick(rng, self._of("lock", locked=True))
        if lock_id is None:
            return None
        door, pin = self.state["devices"][lock_id]["name"], self.state["devices"][lock_id]["pin"]

        def plan() -> Plan:
            found = yield [("list_home_devices", {"kind": "lock"})]
            target = next(d["device_id"] for d in found[0]["devices"] if d["name"] == door)
            yield [("unlock_door", {"device_id": target, "pin": pin})]
            return f"The {door} is unlocked."

        ask = rng.choice(["Unlock the {d}, the PIN is {p}.", "Please open the lock on the {d}; code {p}.",
                          "Can you unlock the {d}? My PIN is {p}."])
        return Request(ask.format(d=door, p=pin), plan(), partial=(
            rng.choice(["Unlock the {d}, please.", "Someone is at the {d}, can you unlock it?"]).format(d=door),
            f"I can do that. What is the PIN for the {door}?", rng.choice(["{p}.", "It's {p}."]).format(p=pin)))

    def ask_lock_up(self, rng: random.Random) -> Request | None:
        def plan() -> Plan:
            found = yield [("list_home_devices", {"kind": "lock"})]
            doors = found[0]["devices"]
            states = yield [("get_device_state", {"device_id": d["device_id"]}) for d in doors]
            open_doors = [s for s in states if not s["locked"]]
            if not open_doors:
                return "Every door was already locked: " + ", ".join(s["name"] for s in states) + "."
            yield [("lock_door", {"device_id": s["device_id"]}) for s in open_doors]
            return "Locked the " + " and the ".join(s["name"] for s in open_doors) + "; every door is locked now."

        return Request(rng.choice(["Lock all the doors, please.", "I'm heading out: make sure every door is locked.",
                                   "Lock up the house for the night."]), plan())

    def ask_status(self, rng: random.Random) -> Request | None:
        device_id = pick(rng, sorted(self.state["devices"]))
        if device_id is None:
            return None
        device = self.state["devices"][device_id]
        name, room, kind = device["name"], device["room"], device["kind"]
        where = f"the {name} in the {room}" if kind == "light" else f"the {room} {name}"
        ask = {"light": ["Is {w} on?", "How bright is {w} right now?"],
               "thermostat": ["What is {w} set to?", "How warm is it in the {r}, and what is the heating set to?"],
               "lock": ["Is the {n} locked?", "Did I leave the {n} unlocked?"],
               "blinds": ["How far open are the {r} blinds?", "Are the blinds in the {r} closed?"]}[kind]

        def plan() -> Plan:
            found = yield [("list_home_devices", {"room": room, "kind": kind})]
            target = next(d["device_id"] for d in found[0]["devices"] if d["name"] == name)
            got = (yield [("get_device_state", {"device_id": target})])[0]
            if kind == "light":
                return f"The {name} is on at {got['brightness']}%." if got["on"] else f"The {name} is off."
            if kind == "thermostat":
                if got["mode"] == "off":
                    return f"The {room} is at {_deg(got['current'])}; the thermostat is off."
                return (f"The {room} is at {_deg(got['current'])}; the thermostat is set to {_deg(got['target'])} "
                        f"in {got['mode']} mode.")
            if kind == "lock":
                return f"The {name} is {'locked' if got['locked'] else 'unlocked'}."
            return f"The {room} blinds are {_blinds(got['position'])}."

        return Request(rng.choice(ask).format(w=where, r=room, n=name), plan())

    def ask_blinds(self, rng: random.Random) -> Request | None:
        device_id = pick(rng, self._of("blinds"))
        if device_id is None:
            return None
        room = self.state["devices"][device_id]["room"]
        position = rng.choice([0, 0, 25, 50, 75, 100, 100])
        said = {0: "close the {r} blinds", 100: "open the {r} blinds all the way"}.get(
            position, "set the {r} blinds to {p}% open")

        def plan() -> Plan:
            found = yield [("list_home_devices", {"room": room, "kind": "blinds"})]
            done = yield [("set_blinds", {"device_id": found[0]["devices"][0]["device_id"], "position": position})]
            return f"The {room} blinds are {_blinds(done[0]['position'])} now."

        text = rng.choice(["Please {s}.", "Could you {s}?", "{S}, thanks."])
        said = said.format(r=room, p=position)
        return Request(text.format(s=said, S=said[0].upper() + said[1:]), plan())

    def ask_save_scene(self, rng: random.Random) -> Request | None:
        rooms = sorted({v["room"] for v in self.state["devices"].values() if v["kind"] == "light"})
        names = [s for s in _SCENES if s not in self.state["scenes"]]
        room, scene = pick(rng, rooms), pick(rng, names)
        if room is None or scene is None:
            return None
        level = rng.choice([15, 30, 45, 70])
        shade = rng.choice([0, 50]) if self._of("blinds", room=room) else None

        def plan() -> Plan:
            found = yield [("list_home_devices", {"room": room})]
            calls = [("dim_light", {"device_id": d["device_id"], "brightness": level})
                     for d in found[0]["devices"] if d["kind"] == "light"]
            calls += [("set_blinds", {"device_id": d["device_id"], "position": shade})
                      for d in found[0]["devices"] if d["kind"] == "blinds" and shade is not None]
            yield calls
            saved = yield [("save_home_scene", {"scene_name": scene, "room": room})]
            return f"The {room} is set up and saved as '{scene}' ({_count(saved[0]['devices'], 'device')})."

        blinds = "" if shade is None else (" and close the blinds" if shade == 0 else " and half-close the blinds")
        setup = f"set the {room} lights to {level}%{blinds}"
        return Request(f"Please {setup}, then save that as a scene called '{scene}'.", plan(), partial=(
            f"Please {setup}, then save it as a scene.", "Happy to. What should the scene be called?",
            rng.choice(["Call it '{s}'.", "'{s}'.", "Name it {s}."]).format(s=scene)))

    def ask_scene(self, rng: random.Random) -> Request | None:
        scene = pick(rng, sorted(self.state["scenes"]))
        if scene is None:
            return None

        def plan() -> Plan:
            done = (yield [("activate_home_scene", {"scene_name": scene})])[0]
            return f"'{scene}' is on: {len(done['changed'])} of its {_count(done['devices'], 'device')} changed."

        return Request(rng.choice(["Activate the '{s}' scene.", "Switch to my {s} scene, please.",
                                   "Run the scene '{s}'."]).format(s=scene), plan())
