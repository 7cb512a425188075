"""A lending library: a catalog of books, members, loans and holds (training environment)."""

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

TODAY = "2026-03-02"
_TITLES = ["The Glass Orchard", "Silent Harbor", "A Map of Small Rivers", "The Copper Lantern", "Northern Salt",
           "The Last Cartographer", "Paper Moons", "The Winter Beekeeper", "Hollow Bells", "The Quiet Engine",
           "Letters from Ashford", "The Tin Violin", "Evening at Marlow", "Stone and Feather", "The Ninth Window",
           "River of Lamps", "A Season of Clocks", "The Velvet Compass"]
_AUTHORS = ["Mara Quill", "Tomas Berg", "Ines Calloway", "Oren Vance", "Lucia Fenn", "Hugo Laine", "Priya Nandakumar",
            "Edda Sorensen", "Jonah Pike", "Amara Obi"]
_MEMBERS = ["Nadia Flores", "Ken Watanabe", "Olga Petrova", "Sam Carter", "Leila Haddad", "Ben Okafor",
            "Clara Jung", "Diego Ramos"]
_DAYS = {7: "a week", 14: "two weeks", 21: "three weeks"}


def _plus_days(date: str, days: int) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


class Library(Environment):
    name = "library"
    title = "city library"
    related_domains = ("education",)

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        titles = rng.sample(_TITLES, 10)
        books = {}
        for i, t in enumerate(titles):
            copies = rng.randint(1, 3)
            books[f"B-{101 + i * 7}"] = {"title": t, "author": rng.choice(_AUTHORS), "year": rng.randint(1952, 2025),
                                         "copies": copies, "available": copies}
        members = {}
        for i, person in enumerate(rng.sample(_MEMBERS, 4)):
            members[f"M-{200 + i * 13}"] = {"name": person, "fines": rng.choice([0.0, 0.0, 1.5, 3.0, 4.25])}
        loans: dict[str, Any] = {}
        for n in range(rng.randint(2, 5)):
            book_id = rng.choice([b for b, v in books.items() if v["available"] > 0])
            books[book_id]["available"] -= 1
            loans[f"L-{500 + n}"] = {"member_id": rng.choice(sorted(members)), "book_id": book_id,
                                     "due": _plus_days(TODAY, rng.randint(-3, 12)), "renewals": 0}
        return {"today": TODAY, "books": books, "members": members, "loans": loans, "holds": {}, "next_loan": 520,
                "next_hold": 900}

    # ------------------------------------------------------------------ functions

    @tool("Searches the catalog by words of the title or the author's name.", "search the catalog",
          query=string("Words of the title or the author's name, e.g. 'orchard'."),
          available_only=boolean("List only books with a copy on the shelf.", default=False))
    def search_catalog(self, query: str, available_only: bool) -> dict[str, Any]:
        words = query.lower().split()
        hits = [{"book_id": b, "title": v["title"], "author": v["author"], "available": v["available"]}
                for b, v in self.state["books"].items()
                if words and all(w in f"{v['title']} {v['author']}".lower() for w in words)
                and (not available_only or v["available"] > 0)]
        return {"results": hits, "total": len(hits)}

    @tool("Returns a book's details and how many copies are on the shelf.", "look up a book",
          book_id=string("The book's ID, e.g. 'B-108'."))
    def get_book(self, book_id: str) -> dict[str, Any]:
        return {"book_id": book_id, **self._book(book_id)}

    @tool("Returns a member's name and unpaid fines.", "look up a member",
          member_id=string("The member's ID, e.g. 'M-213'."))
    def get_member(self, member_id: str) -> dict[str, Any]:
        return {"member_id": member_id, **self._member(member_id)}

    @tool("Lists a member's current loans with their due dates.", "list someone's loans",
          member_id=string("The member's ID."))
    def list_loans(self, member_id: str) -> dict[str, Any]:
        self._member(member_id)
        loans = [{"loan_id": k, "book_id": v["book_id"], "title": self.state["books"][v["book_id"]]["title"],
                  "due": v["due"]} for k, v in self.state["loans"].items() if v["member_id"] == member_id]
        return {"loans": loans}

    @tool("Lends a book to a member for 14 days.", "check out a book",
          member_id=string("The member's ID."), book_id=string("The book's ID."))
    def borrow_book(self, member_id: str, book_id: str) -> dict[str, Any]:
        member, book = self._member(member_id), self._book(book_id)
        if member["fines"] > 5:
            raise ToolError("member has unpaid fines over 5.00")
        if book["available"] < 1:
            raise ToolError(f"no copy of {book_id} is on the shelf")
        book["available"] -= 1
        loan_id = f"L-{self.state['next_loan']}"
        self.state["next_loan"] += 1
        due = _plus_days(TODAY, 14)
        self.state["loans"][loan_id] = {"member_id": member_id, "book_id": book_id, "due": due, "renewals": 0}
        return {"loan_id": loan_id, "due": due}

    @tool("Ends a loan: the copy goes back on the shelf. A late return adds 0.25 per day to the member's fines.",
          "return a book", loan_id=string("The loan's ID, e.g. 'L-503'."))
    def return_book(self, loan_id: str) -> dict[str, Any]:
        loan = self._loan(loan_id)
        import datetime as dt

        late = max(0, (dt.date.fromisoformat(TODAY) - dt.date.fromisoformat(loan["due"])).days)
        fine = round(late * 0.25, 2)
        self.state["members"][loan["member_id"]]["fines"] = round(self.state["members"][loan["member_id"]]["fines"]
                                                                  + fine, 2)
        self.state["books"][loan["book_id"]]["available"] += 1
        del self.state["loans"][loan_id]
        return {"returned": True, "late_fee": fine}

    @tool("Moves a loan's due date later, at most twice per loan.", "renew a loan",
          loan_id=string("The loan's ID."),
          days=integer("How many days to add.", minimum=7, maximum=21, optional=True, default=14))
    def renew_loan(self, loan_id: str, days: int) -> dict[str, Any]:
        loan = self._loan(loan_id)
        if loan["renewals"] >= 2:
            raise ToolError("this loan was already renewed twice")
        loan["renewals"] += 1
        loan["due"] = _plus_days(loan["due"], days)
        return {"loan_id": loan_id, "due": loan["due"]}

    @tool("Reserves the next copy of a book that is out.", "place a hold on a book",
          member_id=string("The member's ID."), book_id=string("The book's ID."))
    def place_hold(self, member_id: str, book_id: str) -> dict[str, Any]:
        self._member(member_id)
        if self._book(book_id)["available"] > 0:
            raise ToolError("a copy is on the shelf: borrow it instead")
        hold_id = f"H-{self.state['next_hold']}"
        self.state["next_hold"] += 1
        self.state["holds"][hold_id] = {"member_id": member_id, "book_id": book_id}
        return {"hold_id": hold_id}

    @tool("Pays part or all of a member's fines.", "pay library fines",
          member_id=string("The member's ID."), amount=number("The amount paid.", minimum=0.01))
    def pay_fines(self, member_id: str, amount: float) -> dict[str, Any]:
        member = self._member(member_id)
        if amount > member["fines"] + 1e-9:
            raise ToolError(f"amount exceeds the fines owed ({member['fines']:.2f})")
        member["fines"] = round(member["fines"] - amount, 2)
        return {"member_id": member_id, "fines": member["fines"]}

    # ------------------------------------------------------------------ lookups

    def _book(self, book_id: str) -> dict[str, Any]:
        if book_id not in self.state["books"]:
            raise ToolError(f"no book with ID {book_id}")
        return self.state["books"][book_id]

    def _member(self, member_id: str) -> dict[str, Any]:
        if member_id not in self.state["members"]:
            raise ToolError(f"no member with ID {member_id}")
        return self.state["members"][member_id]

    def _loan(self, loan_id: str) -> dict[str, Any]:
        if loan_id not in self.state["loans"]:
            raise ToolError(f"no loan with ID {loan_id}")
        return self.state["loans"][loan_id]

    def _query(self, rng: random.Random, book_id: str) -> str:
        """How a user names a book in a search: a distinctive word of its title (or the whole title)."""
        title = self.state["books"][book_id]["title"]
        words = [w for w in title.split() if len(w) > 3 and w.lower() not in ("the", "from", "and")]
        query = rng.choice(words) if words and rng.random() < 0.6 else title
        # Only a query that finds this one book lets the plan take the first result.
        found = self.search_catalog(query, False)["results"]
        return query if len(found) == 1 else title

    # ------------------------------------------------------------------ requests

    def ask_borrow(self, rng: random.Random) -> Request | None:
        members = sorted(m for m, v in self.state["members"].items() if v["fines"] <= 5)
        shelf = sorted(b for b, v in self.state["books"].items() if v["available"] > 0)
        member_id, book_id = pick(rng, members), pick(rng, shelf)
        if member_id is None or book_id is None:
            return None
        title = self.state["books"][book_id]["title"]
        query = self._query(rng, book_id)

        def plan() -> Plan:
            found = yield [("search_catalog", {"query": query})]
            book = found[0]["results"][0]["book_id"]
            loan = yield [("borrow_book", {"member_id": member_id, "book_id": book})]
            return f"Done: '{title}' is checked out to {member_id} (loan {loan[0]['loan_id']}), due {loan[0]['due']}."

        ask = rng.choice(["Please check out '{t}' for me, my member ID is {m}.", "I'm member {m}. Can I borrow '{t}'?",
                          "Borrow '{t}' on card {m}, please."])
        return Request(ask.format(t=title, m=member_id), plan(), partial=(
            rng.choice(["I'd like to borrow '{t}'.", "Can you check out '{t}' for me?"]).format(t=title),
            "Sure. What is your member ID?", rng.choice(["It's {m}.", "{m}.", "My ID is {m}."]).format(m=member_id)))

    def ask_borrow_two(self, rng: random.Random) -> Request | None:
        members = sorted(m for m, v in self.state["members"].items() if v["fines"] <= 5)
        shelf = sorted(b for b, v in self.state["books"].items() if v["available"] > 0)
        if not members or len(shelf) < 2:
            return None
        member_id = rng.choice(members)
        first, second = rng.sample(shelf, 2)
        t1, t2 = (self.state["books"][b]["title"] for b in (first, second))
        q1, q2 = self._query(rng, first), self._query(rng, second)

        def plan() -> Plan:
            found = yield [("search_catalog", {"query": q1}), ("search_catalog", {"query": q2})]
            ids = [r["results"][0]["book_id"] for r in found]
            loans = yield [("borrow_book", {"member_id": member_id, "book_id": b}) for b in ids]
            first, second = loans[0]["loan_id"], loans[1]["loan_id"]
            return f"Both are yours until {loans[0]['due']}: '{t1}' ({first}) and '{t2}' ({second})."

        return Request(f"Member {member_id} here. I want to take out '{t1}' and '{t2}'.", plan())

    def ask_return(self, rng: random.Random) -> Request | None:
        loan_id = pick(rng, sorted(self.state["loans"]))
        if loan_id is None:
            return None
        loan = self.state["loans"][loan_id]
        member_id, title = loan["member_id"], self.state["books"][loan["book_id"]]["title"]

        def plan() -> Plan:
            loans = yield [("list_loans", {"member_id": member_id})]
            target = next(x["loan_id"] for x in loans[0]["loans"] if x["title"] == title)
            done = yield [("return_book", {"loan_id": target})]
            fee = done[0]["late_fee"]
            return f"'{title}' is returned." + (f" It was late, so {fee:.2f} was added to the fines." if fee else "")

        return Request(rng.choice(["I'm returning '{t}'. Member ID {m}.", "Please return '{t}' for member {m}.",
                                   "Member {m}: I've brought back '{t}'."]).format(t=title, m=member_id), plan())

    def ask_renew(self, rng: random.Random) -> Request | None:
        loans = sorted(k for k, v in self.state["loans"].items() if v["renewals"] < 2)
        loan_id = pick(rng, loans)
        if loan_id is None:
            return None
        loan = self.state["loans"][loan_id]
        member_id, title = loan["member_id"], self.state["books"][loan["book_id"]]["title"]
        days = rng.choice([None, 7, 21])

        def plan() -> Plan:
            loans_now = yield [("list_loans", {"member_id": member_id})]
            target = next(x["loan_id"] for x in loans_now[0]["loans"] if x["title"] == title)
            args: dict[str, Any] = {"loan_id": target}
            if days is not None:
                args["days"] = days
            renewed = yield [("renew_loan", args)]
            return f"Renewed: '{title}' is now due {renewed[0]['due']}."

        longer = f" for {_DAYS[days]}" if days else ""
        return Request(rng.choice(["Can you renew my loan of '{t}'{d}? I'm {m}.",
                                   "Member {m} — please extend '{t}'{d}."]).format(t=title, d=longer, m=member_id),
                       plan())

    def ask_hold(self, rng: random.Random) -> Request | None:
        out = sorted(b for b, v in self.state["books"].items() if v["available"] == 0)
        book_id, member_id = pick(rng, out), pick(rng, sorted(self.state["members"]))
        if book_id is None or member_id is None:
            return None
        title = self.state["books"][book_id]["title"]
        query = self._query(rng, book_id)

        def plan() -> Plan:
            found = yield [("search_catalog", {"query": query})]
            hold = yield [("place_hold", {"member_id": member_id, "book_id": found[0]["results"][0]["book_id"]})]
            return f"All copies of '{title}' are out, so I placed hold {hold[0]['hold_id']} for you."

        return Request(f"Could you reserve '{title}' for member {member_id}? All copies seem to be out.", plan(),
                       partial=(f"Please put a hold on '{title}'.",
                                "I can do that. Which member ID should the hold be on?", f"{member_id}, please."))

    def ask_pay(self, rng: random.Random) -> Request | None:
        member_id = pick(rng, sorted(m for m, v in self.state["members"].items() if v["fines"] > 0))
        if member_id is None:
            return None

        def plan() -> Plan:
            info = yield [("get_member", {"member_id": member_id})]
            owed = info[0]["fines"]
            paid = yield [("pay_fines", {"member_id": member_id, "amount": owed})]
            return f"You owed {owed:.2f}; it is paid, and the balance is now {paid[0]['fines']:.2f}."

        return Request(rng.choice(["I want to pay off all my fines. Member {m}.",
                                   "Settle whatever member {m} owes, please."]).format(m=member_id), plan())

    def ask_author(self, rng: random.Random) -> Request | None:
        book_id = pick(rng, sorted(self.state["books"]))
        if book_id is None:
            return None
        book = self.state["books"][book_id]

        def plan() -> Plan:
            found = yield [("search_catalog", {"query": book["author"], "available_only": True})]
            titles = [r["title"] for r in found[0]["results"]]
            if not titles:
                return f"Nothing by {book['author']} is on the shelf right now."
            return f"On the shelf by {book['author']}: " + ", ".join(f"'{t}'" for t in titles) + "."

        ask = rng.choice(["Which books by {a} are on the shelf now?", "Is anything by {a} available to borrow?"])
        return Request(ask.format(a=book["author"]), plan())
