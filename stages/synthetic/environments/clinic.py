"""A family clinic: doctors with a week of slots, patients, appointments and prescriptions (held out)."""

from __future__ import annotations

import random
from typing import Any

from stages.synthetic.environments.base import Environment, Plan, Request, ToolError, pick, string, tool

_DOCTORS = ["Helena Marsh", "Tobias Renner", "Amina Osei", "Rafael Duarte", "Yuki Halloran", "Greta Lindqvist",
            "Samir Qadri", "Noor Bakker"]
_SPECIALTIES = ["general practice", "pediatrics", "dermatology", "cardiology"]
_PATIENTS = ["Iris Delacroix", "Mateo Varga", "Hannah Oyelaran", "Felix Brandt", "Sofia Marchetti", "Arjun Pillai",
             "Maeve Donnelly", "Tariq Nasser", "Lena Vogt", "Pablo Serrano"]
_MEDICINES = [("lisinopril", "10 mg daily"), ("metformin", "500 mg twice daily"), ("cetirizine", "10 mg daily"),
              ("atorvastatin", "20 mg nightly"), ("levothyroxine", "50 mcg mornings"),
              ("salbutamol inhaler", "2 puffs as needed"), ("omeprazole", "20 mg daily")]
_ALLERGIES = ["penicillin", "latex", "peanuts", "ibuprofen", "birch pollen", "shellfish"]
_REASONS = ["check-up", "follow-up", "skin rash", "blood pressure review", "persistent cough", "vaccination"]
_NOTES = ["Will bring the last blood test results.", "Needs step-free access.", "Prefers a reminder call the day "
          "before.", "Asks to discuss a change of dose.", "Bringing a parent along to the visit."]
# The clinic's week; fixed so that a world never depends on the machine's date.
_WEEK = {"2026-03-09": "Monday", "2026-03-10": "Tuesday", "2026-03-11": "Wednesday", "2026-03-12": "Thursday",
         "2026-03-13": "Friday"}
_TIMES = ["08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "13:30", "14:00", "14:30", "15:00", "15:30", "16:00"]


class Clinic(Environment):
    name = "clinic"
    title = "family clinic"
    related_domains = ("health",)
    heldout = True

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        doctors, slots = {}, {}
        for i, person in enumerate(rng.sample(_DOCTORS, 5)):
            doctor_id = f"DR-{3 + i * 4}"
            # Every clinic has a family doctor; the other specialties are drawn.
            doctors[doctor_id] = {"name": f"Dr. {person}", "specialty": _SPECIALTIES[0] if i == 0
                                  else rng.choice(_SPECIALTIES)}
            for date in sorted(rng.sample(sorted(_WEEK), 3)):
                for time in sorted(rng.sample(_TIMES, 4)):
                    slots[f"SL-{201 + len(slots)}"] = {"doctor_id": doctor_id, "date": date, "time": time,
                                                       "appointment_id": None}
        patients, prescriptions = {}, {}
        for i, person in enumerate(rng.sample(_PATIENTS, 6)):
            patient_id = f"PT-{11 + i * 6}"
            patients[patient_id] = {"name": person, "birth_year": rng.randint(1946, 2019),
                                    "allergies": rng.sample(_ALLERGIES, rng.choice([0, 0, 1, 2]))}
            for medicine, dose in rng.sample(_MEDICINES, rng.choice([0, 1, 1, 2])):
                prescriptions[f"RX-{401 + len(prescriptions)}"] = {"patient_id": patient_id, "medicine": medicine,
                                                                    "dose": dose, "refills_left": rng.randint(0, 3)}
        appointments: dict[str, Any] = {}
        for slot_id in sorted(rng.sample(sorted(slots), rng.randint(5, 9))):
            appointment_id = f"AP-{301 + len(appointments)}"
            slots[slot_id]["appointment_id"] = appointment_id
            appointments[appointment_id] = {"patient_id": rng.choice(sorted(patients)), "slot_id": slot_id,
                                            "reason": rng.choice(_REASONS), "notes": []}
        return {"doctors": doctors, "slots": slots, "patients": patients, "prescriptions": prescriptions,
                "appointments": appointments, "next_appointment": 301 + len(appointments)}

    # ------------------------------------------------------------------ functions

    @tool("Lists the clinic's doctors, optionally only those of one specialty.", "list the clinic's doctors",
          specialty=string("Only doctors of this specialty.", enum=_SPECIALTIES, optional=True))
    def list_clinic_doctors(self, specialty: str | None = None) -> dict[str, Any]:
        found = [{"doctor_id": d, **v} for d, v in self.state["doctors"].items()
                 if specialty is None or v["specialty"] == specialty]
        return {"doctors": found}

    @tool("Lists a doctor's free appointment slots on one date, earliest first.", "find a doctor's free slots",
          doctor_id=string("The doctor's ID, e.g. 'DR-7'."), date=string("The date, YYYY-MM-DD.", format="date"))
    def find_open_slots(self, doctor_id: str, date: str) -> dict[str, Any]:
        self._find("doctors", doctor_id)
        free = [{"slot_id": s, "time": v["time"]} for s, v in self.state["slots"].items()
                if v["doctor_id"] == doctor_id and v["date"] == date and v["appointment_id"] is None]
        return {"doctor_id": doctor_id, "date": date, "slots": free}

    @tool("Books a free slot for a patient.", "book an appointment",
          patient_id=string("The patient's ID, e.g. 'PT-17'."), slot_id=string("The slot's ID, e.g. 'SL-204'."),
          reason=string("Why the patient comes, in a few words.", optional=True, default="check-up"))
    def book_clinic_visit(self, patient_id: str, slot_id: str, reason: str) -> dict[str, Any]:
        self._find("patients", patient_id)
        slot = self._free_slot(slot_id)
        appointment_id = f"AP-{self.state['next_appointment']}"
        self.state["next_appointment"] += 1
        slot["appointment_id"] = appointment_id
        self.state["appointments"][appointment_id] = {"patient_id": patient_id, "slot_id": slot_id,
                                                      "reason": reason, "notes": []}
        return {"appointment_id": appointment_id, **self._when(slot_id)}

    @tool("Cancels an appointment and frees its slot.", "cancel an appointment",
          appointment_id=string("The appointment's ID, e.g. 'AP-305'."))
    def cancel_clinic_visit(self, appointment_id: str) -> dict[str, Any]:
        appointment = self._find("appointments", appointment_id)
        self.state["slots"][appointment["slot_id"]]["appointment_id"] = None
        del self.state["appointments"][appointment_id]
        return {"appointment_id": appointment_id, "cancelled": True}

    @tool("Moves an appointment to another free slot of the same doctor.", "reschedule an appointment",
          appointment_id=string("The appointment's ID."), new_slot_id=string("The free slot to move to."))
    def reschedule_clinic_visit(self, appointment_id: str, new_slot_id: str) -> dict[str, Any]:
        appointment = self._find("appointments", appointment_id)
        slot = self._free_slot(new_slot_id)
        if slot["doctor_id"] != self.state["slots"][appointment["slot_id"]]["doctor_id"]:
            raise ToolError("an appointment can only move to a slot of the same doctor")
        self.state["slots"][appointment["slot_id"]]["appointment_id"] = None
        slot["appointment_id"] = appointment_id
        appointment["slot_id"] = new_slot_id
        return {"appointment_id": appointment_id, **self._when(new_slot_id)}

    @tool("Lists a patient's booked appointments, earliest first.", "list a patient's appointments",
          patient_id=string("The patient's ID."))
    def list_patient_visits(self, patient_id: str) -> dict[str, Any]:
        self._find("patients", patient_id)
        visits = [{"appointment_id": a, **self._when(v["slot_id"]), "reason": v["reason"], "notes": list(v["notes"])}
                  for a, v in self.state["appointments"].items() if v["patient_id"] == patient_id]
        return {"appointments": sorted(visits, key=lambda v: (v["date"], v["time"]))}

    @tool("Returns a patient's record summary: birth year, allergies, prescriptions and number of booked visits.",
          "look up a patient's record", patient_id=string("The patient's ID."))
    def get_patient_record(self, patient_id: str) -> dict[str, Any]:
        patient = self._find("patients", patient_id)
        prescriptions = [{"prescription_id": r, "medicine": v["medicine"], "dose": v["dose"],
                          "refills_left": v["refills_left"]}
                         for r, v in self.state["prescriptions"].items() if v["patient_id"] == patient_id]
        booked = sum(v["patient_id"] == patient_id for v in self.state["appointments"].values())
        return {"patient_id": patient_id, **patient, "prescriptions": prescriptions, "booked_visits": booked}

    @tool("Adds a note to an appointment for the doctor to read.", "add a note to a visit",
          appointment_id=string("The appointment's ID."), note=string("The note's text."))
    def add_visit_note(self, appointment_id: str, note: str) -> dict[str, Any]:
        appointment = self._find("appointments", appointment_id)
        if not note.strip():
            raise ToolError("the note is empty")
        appointment["notes"].append(note.strip())
        return {"appointment_id": appointment_id, "notes": len(appointment["notes"])}

    @tool("Requests a refill of one of the patient's prescriptions; uses up one of its refills.",
          "request a prescription refill", patient_id=string("The patient's ID."),
          prescription_id=string("The prescription's ID, e.g. 'RX-403'."))
    def request_refill(self, patient_id: str, prescription_id: str) -> dict[str, Any]:
        self._find("patients", patient_id)
        prescription = self.state["prescriptions"].get(prescription_id)
        if prescription is None or prescription["patient_id"] != patient_id:
            raise ToolError(f"{patient_id} has no prescription with ID {prescription_id}")
        if prescription["refills_left"] < 1:
            raise ToolError(f"no refills are left on {prescription_id}: the doctor has to renew it")
        prescription["refills_left"] -= 1
        return {"prescription_id": prescription_id, **{k: prescription[k] for k in ("medicine", "refills_left")}}

    # ------------------------------------------------------------------ lookups

    def _find(self, table: str, key: str) -> dict[str, Any]:
        if key not in self.state[table]:
            raise ToolError(f"no {table[:-1]} with ID {key}")
        return self.state[table][key]

    def _free_slot(self, slot_id: str) -> dict[str, Any]:
        slot = self._find("slots", slot_id)
        if slot["appointment_id"] is not None:
            raise ToolError(f"slot {slot_id} is already taken")
        return slot

    def _when(self, slot_id: str) -> dict[str, Any]:
        s = self.state["slots"][slot_id]
        doctor = self.state["doctors"][s["doctor_id"]]["name"]
        return {"slot_id": slot_id, "doctor_id": s["doctor_id"], "doctor": doctor, "date": s["date"], "time": s["time"]}

    def _open_days(self) -> list[tuple[str, str]]:
        """(doctor, date) pairs with at least one free slot: the only ones a booking plan may aim at."""
        return sorted({(v["doctor_id"], v["date"]) for v in self.state["slots"].values()
                       if v["appointment_id"] is None})

    def _visit(self, appointment_id: str) -> dict[str, Any]:
        appointment = self.state["appointments"][appointment_id]
        return {**self._when(appointment["slot_id"]), "patient_id": appointment["patient_id"]}

    # ------------------------------------------------------------------ requests

    def ask_book(self, rng: random.Random) -> Request | None:
        day = pick(rng, self._open_days())
        if day is None:
            return None
        doctor_id, date = day
        doctor = self.state["doctors"][doctor_id]
        patient_id, reason = rng.choice(sorted(self.state["patients"])), rng.choice(_REASONS)
        by_name = rng.random() < 0.5  # a patient often knows the doctor's name and specialty, not the ID

        def plan() -> Plan:
            target = doctor_id
            if by_name:
                found = yield [("list_clinic_doctors", {"specialty": doctor["specialty"]})]
                target = next(d["doctor_id"] for d in found[0]["doctors"] if d["name"] == doctor["name"])
            free = yield [("find_open_slots", {"doctor_id": target, "date": date})]
            slot_id = free[0]["slots"][0]["slot_id"]
            booked = yield [("book_clinic_visit", {"patient_id": patient_id, "slot_id": slot_id, "reason": reason})]
            b = booked[0]
            return f"Booked: {b['doctor']} on {b['date']} at {b['time']} (appointment {b['appointment_id']})."

        who = f"{doctor['name']}, the {doctor['specialty']} doctor," if by_name else f"{doctor['name']} ({doctor_id})"
        want = f"I'd like to see {who} on {_WEEK[date]} {date} for a {reason}"
        text = rng.choice(["{w}. The earliest free time is fine. I'm patient {p}.",
                           "Patient {p} here. {w}, first free slot please."]).format(w=want, p=patient_id)
        reply = rng.choice(["It's {p}.", "{p}.", "My ID is {p}."]).format(p=patient_id)
        return Request(text, plan(), partial=(f"{want}, earliest free time please.",
                                              "Happy to book that. What is your patient ID?", reply))

    def ask_specialists(self, rng: random.Random) -> Request | None:
        specialty = pick(rng, sorted({v["specialty"] for v in self.state["doctors"].values()}))
        if specialty is None:
            return None
        date = rng.choice(sorted(_WEEK))

        def plan() -> Plan:
            found = yield [("list_clinic_doctors", {"specialty": specialty})]
            doctors = found[0]["doctors"]
            free = yield [("find_open_slots", {"doctor_id": d["doctor_id"], "date": date}) for d in doctors]
            lines = [f"{d['name']}: " + ", ".join(s["time"] for s in f["slots"])
                     for d, f in zip(doctors, free, strict=True) if f["slots"]]
            if not lines:
                return f"No {specialty} doctor has a free slot on {date}."
            return f"Free {specialty} slots on {date}: " + "; ".join(lines) + "."

        ask = rng.choice(["Which {s} doctors have free time on {d}?", "Is there any free {s} appointment on {d}?",
                          "Show me the open {s} slots for {w} {d}."])
        return Request(ask.format(s=specialty, d=date, w=_WEEK[date]), plan())

    def ask_cancel(self, rng: random.Random) -> Request | None:
        appointment_id = pick(rng, sorted(self.state["appointments"]))
        if appointment_id is None:
            return None
        v = self._visit(appointment_id)

        def plan() -> Plan:
            visits = yield [("list_patient_visits", {"patient_id": v["patient_id"]})]
            target = next(a["appointment_id"] for a in visits[0]["appointments"]
                          if (a["doctor"], a["date"], a["time"]) == (v["doctor"], v["date"], v["time"]))
            yield [("cancel_clinic_visit", {"appointment_id": target})]
            return f"Your {v['time']} visit with {v['doctor']} on {v['date']} is cancelled ({target})."

        visit = f"my visit with {v['doctor']} on {v['date']} at {v['time']}"
        text = rng.choice(["Please cancel {v}. Patient ID {p}.", "I'm {p} and I need to cancel {v}."])
        return Request(text.format(v=visit, p=v["patient_id"]), plan(), partial=(
            f"I need to cancel {visit}.", "Sure. What is your patient ID?", f"{v['patient_id']}."))

    def ask_reschedule(self, rng: random.Random) -> Request | None:
        slot_of = {a: self.state["slots"][v["slot_id"]] for a, v in self.state["appointments"].items()}
        # A visit moves only to another day of its own doctor that still has a free slot.
        movable = [(a, d) for a, s in sorted(slot_of.items()) for doc, d in self._open_days()
                   if doc == s["doctor_id"] and d != s["date"]]
        if not movable:
            return None
        appointment_id, date = rng.choice(movable)
        v = self._visit(appointment_id)

        def plan() -> Plan:
            visits = yield [("list_patient_visits", {"patient_id": v["patient_id"]})]
            mine = next(a for a in visits[0]["appointments"]
                        if (a["doctor"], a["date"], a["time"]) == (v["doctor"], v["date"], v["time"]))
            free = yield [("find_open_slots", {"doctor_id": mine["doctor_id"], "date": date})]
            moved = yield [("reschedule_clinic_visit", {"appointment_id": mine["appointment_id"],
                                                        "new_slot_id": free[0]["slots"][0]["slot_id"]})]
            return f"Moved: you now see {moved[0]['doctor']} on {moved[0]['date']} at {moved[0]['time']}."

        visit = f"my {v['date']} {v['time']} appointment with {v['doctor']}"
        text = rng.choice(["I'm {p}. Can you move {v} to {d}? The earliest free time that day, please.",
                           "Patient {p}: please reschedule {v} to the first free time on {d}."])
        reply = rng.choice(["{d}, please.", "Make it {d}."]).format(d=date)
        return Request(text.format(p=v["patient_id"], v=visit, d=date), plan(), partial=(
            f"Patient {v['patient_id']}: I need to move {visit}, first free time on the new day.",
            "Of course. Which date would you like instead?", reply))

    def ask_overview(self, rng: random.Random) -> Request | None:
        patient_id = pick(rng, sorted(self.state["patients"]))
        if patient_id is None:
            return None

        def plan() -> Plan:
            record, visits = yield [("get_patient_record", {"patient_id": patient_id}),
                                    ("list_patient_visits", {"patient_id": patient_id})]
            booked = [f"{a['doctor']} on {a['date']} at {a['time']}" for a in visits["appointments"]]
            refills = [f"{r['medicine']} ({r['refills_left']} left)" for r in record["prescriptions"]
                       if r["refills_left"] > 0]
            allergies = " and ".join(record["allergies"]) or "none"
            return (f"Booked visits: {'; '.join(booked) or 'none'}. Refillable prescriptions: "
                    f"{', '.join(refills) or 'none'}. Allergies on file: {allergies}.")

        return Request(rng.choice(["I'm {p}. What visits do I have, what can I refill, and what allergies are on file?",
                                   "For patient {p}: booked visits, refillable prescriptions and allergies, please."])
                       .format(p=patient_id), plan())

    def ask_note(self, rng: random.Random) -> Request | None:
        appointment_id = pick(rng, sorted(self.state["appointments"]))
        if appointment_id is None:
            return None
        v, note = self._visit(appointment_id), rng.choice(_NOTES)

        def plan() -> Plan:
            visits = yield [("list_patient_visits", {"patient_id": v["patient_id"]})]
            target = next(a["appointment_id"] for a in visits[0]["appointments"]
                          if (a["doctor"], a["date"], a["time"]) == (v["doctor"], v["date"], v["time"]))
            noted = yield [("add_visit_note", {"appointment_id": target, "note": note})]
            return f"The note is on appointment {target}; it now has {noted[0]['notes']} note(s)."

        text = rng.choice(["Add a note to {p}'s visit with {o} on {d} at {t}: \"{n}\"",
                           "For patient {p}, {o} on {d} at {t}, please note: \"{n}\""])
        return Request(text.format(p=v["patient_id"], o=v["doctor"], d=v["date"], t=v["time"], n=note), plan())

    def ask_refill(self, rng: random.Random) -> Request | None:
        prescription_id = pick(rng, sorted(r for r, v in self.state["prescriptions"].items() if v["refills_left"]))
        if prescription_id is None:
            return None
        patient_id, medicine = (self.state["prescriptions"][prescription_id][k] for k in ("patient_id", "medicine"))

        def plan() -> Plan:
            record = yield [("get_patient_record", {"patient_id": patient_id})]
            target = next(r["prescription_id"] for r in record[0]["prescriptions"] if r["medicine"] == medicine)
            done = yield [("request_refill", {"patient_id": patient_id, "prescription_id": target})]
            return f"The refill of {medicine} is requested; {done[0]['refills_left']} refill(s) remain on {target}."

        text = rng.choice(["Please refill my {m}. Patient ID {p}.", "I'm {p}; I'm running out of {m}.",
                           "Can I get a refill of {m}? I'm patient {p}."])
        reply = rng.choice(["{p}.", "It's {p}."]).format(p=patient_id)
        return Request(text.format(m=medicine, p=patient_id), plan(), partial=(
            f"I need a refill of my {medicine}.", "I can request it. What is your patient ID?", reply))
