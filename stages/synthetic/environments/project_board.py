"""A team's kanban board: tasks that move through backlog, doing, review and done (training environment)."""

from __future__ import annotations

import random
from typing import Any

from stages.synthetic.environments.base import (
    Environment,
    Plan,
    Request,
    ToolError,
    pick,
    string,
    tool,
)

TODAY = "2026-04-13"
STATUSES = ["backlog", "doing", "review", "done"]
PRIORITIES = ["low", "medium", "high"]
# Where a task may go next: work flows forward, can be sent back one column, and done is final.
_NEXT = {"backlog": ["doing"], "doing": ["backlog", "review"], "review": ["doing", "done"], "done": []}
_TITLES = ["Redesign the onboarding screens", "Migrate invoices to the new schema", "Write the quarterly roadmap",
           "Fix the flaky export job", "Translate the help pages", "Audit color contrast", "Add a dark theme",
           "Prepare the partner demo", "Clean up old feature flags", "Set up nightly backups", "Draft release notes",
           "Speed up the search page", "Interview beta testers", "Refresh the pricing table",
           "Archive last year's reports", "Plan the team offsite", "Review vendor contracts", "Update the style guide",
           "Benchmark the image resizer", "Record the product tour video", "Rename the billing endpoints",
           "Sketch the mobile settings page"]
_PEOPLE = [("Rosa Lindqvist", "designer"), ("Omar Haddad", "backend developer"), ("Mei Tanaka", "frontend developer"),
           ("Jonas Feld", "product manager"), ("Ada Okonkwo", "QA engineer"), ("Luis Moreno", "data analyst"),
           ("Hana Novak", "technical writer"), ("Tariq Bell", "DevOps engineer"), ("Ines Duarte", "backend developer")]
_NOTES = ["All checks pass on my side.", "Ready for a second pair of eyes.", "Screenshots are in the task folder.",
          "Only the edge cases are left untested.", "Numbers match last month's report."]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


def _plus_days(date: str, days: int) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


def _spoken(rng: random.Random, date: str) -> str:
    """A date as a user writes it: ISO or 'May 4, 2026' (both name the year, so the call is exact)."""
    year, month, day = (int(x) for x in date.split("-"))
    return rng.choice([date, f"{_MONTHS[month - 1]} {day}, {year}"])


class ProjectBoard(Environment):
    name = "project_board"
    title = "team project board"

    def initial_state(self, rng: random.Random) -> dict[str, Any]:
        members = {n: {"role": r} for n, r in sorted(rng.sample(_PEOPLE, 5))}
        tasks = {}
        for i, title in enumerate(rng.sample(_TITLES, rng.randint(7, 10))):
            status = rng.choice(STATUSES)
            # Work past the backlog always has someone on it (moving a task there requires it).
            owner = rng.choice(sorted(members)) if status != "backlog" or rng.random() < 0.4 else None
            due = _plus_days(TODAY, rng.randint(-5, 30)) if rng.random() < 0.6 else None
            tasks[f"T-{101 + i * 3}"] = {"title": title, "status": status, "assignee": owner, "due": due,
                                         "priority": rng.choice(PRIORITIES), "comments": []}
        return {"today": TODAY, "members": members, "tasks": tasks, "next_task": 140}

    # ------------------------------------------------------------------ functions

    @tool("Adds a task to the backlog, unassigned.", "create a task",
          title=string("A short title for the task."),
          priority=string("How urgent the task is.", enum=PRIORITIES, optional=True, default="medium"),
          due=string("Due date, YYYY-MM-DD.", format="date", optional=True))
    def create_board_task(self, title: str, priority: str, due: str | None = None) -> dict[str, Any]:
        if not title.strip():
            raise ToolError("the title is empty")
        if due is not None:
            self._check_due(due)
        task_id = f"T-{self.state['next_task']}"
        self.state["next_task"] += 1
        self.state["tasks"][task_id] = {"title": title, "status": "backlog", "assignee": None, "due": due,
                                        "priority": priority, "comments": []}
        return {"task_id": task_id, "status": "backlog"}

    @tool("Lists the board's tasks, optionally only those in one column or on one person.", "list tasks",
          status=string("Only tasks in this column.", enum=STATUSES, optional=True),
          assignee=string("Only tasks assigned to this team member (full name).", optional=True))
    def list_board_tasks(self, status: str | None = None, assignee: str | None = None) -> dict[str, Any]:
        if assignee is not None:
            self._member(assignee)
        tasks = [{"task_id": k, "title": v["title"], "status": v["status"], "assignee": v["assignee"],
                  "priority": v["priority"], "due": v["due"]} for k, v in self.state["tasks"].items()
                 if (status is None or v["status"] == status) and (assignee is None or v["assignee"] == assignee)]
        return {"tasks": tasks, "total": len(tasks)}

    @tool("Returns one task with its comments.", "look up a task", task_id=string("The task's ID, e.g. 'T-104'."))
    def get_board_task(self, task_id: str) -> dict[str, Any]:
        return {"task_id": task_id, **self._task(task_id)}

    @tool("Moves a task to another column. Backlog leads to doing, doing to review (or back), review to done "
          "(or back to doing); done tasks stay done, and a task needs an assignee to leave the backlog.",
          "move a task", task_id=string("The task's ID."), status=string("The column to move it to.", enum=STATUSES))
    def move_board_task(self, task_id: str, status: str) -> dict[str, Any]:
        task = self._task(task_id)
        if status not in _NEXT[task["status"]]:
            if task["status"] == "done":
                raise ToolError(f"{task_id} is done; done tasks cannot move")
            raise ToolError(f"{task_id} cannot go from {task['status']} to {status}; allowed: "
                            + ", ".join(_NEXT[task["status"]]))
        if status != "backlog" and task["assignee"] is None:
            raise ToolError(f"{task_id} has no assignee; assign it first")
        previous, task["status"] = task["status"], status
        return {"task_id": task_id, "from": previous, "status": status}

    @tool("Assigns a task to a team member, replacing any previous assignee.", "assign a task",
          task_id=string("The task's ID."), member=string("The team member's full name, e.g. 'Rosa Lindqvist'."))
    def assign_board_task(self, task_id: str, member: str) -> dict[str, Any]:
        task = self._open(task_id)
        self._member(member)
        previous, task["assignee"] = task["assignee"], member
        return {"task_id": task_id, "assignee": member, "previous": previous}

    @tool("Sets or changes a task's due date (today or later).", "set a due date",
          task_id=string("The task's ID."), due=string("The due date, YYYY-MM-DD.", format="date"))
    def set_task_due_date(self, task_id: str, due: str) -> dict[str, Any]:
        task = self._open(task_id)
        self._check_due(due)
        task["due"] = due
        return {"task_id": task_id, "title": task["title"], "due": due}

    @tool("Adds a comment to a task.", "comment on a task", task_id=string("The task's ID."),
          author=string("The commenting team member's full name."), text=string("The comment."))
    def comment_on_task(self, task_id: str, author: str, text: str) -> dict[str, Any]:
        task = self._task(task_id)
        self._member(author)
        task["comments"].append({"author": author, "text": text})
        return {"task_id": task_id, "comments": len(task["comments"])}

    @tool("Removes a task from the board. Done tasks are kept as a record and cannot be deleted.", "delete a task",
          task_id=string("The task's ID."))
    def delete_board_task(self, task_id: str) -> dict[str, Any]:
        task = self._open(task_id)
        del self.state["tasks"][task_id]
        return {"deleted": task_id, "title": task["title"]}

    @tool("Lists the team members with their roles.", "list the team")
    def list_team_members(self) -> dict[str, Any]:
        return {"members": [{"name": n, "role": v["role"]} for n, v in self.state["members"].items()]}

    # ------------------------------------------------------------------ lookups

    def _task(self, task_id: str) -> dict[str, Any]:
        if task_id not in self.state["tasks"]:
            raise ToolError(f"no task with ID {task_id}")
        return self.state["tasks"][task_id]

    def _open(self, task_id: str) -> dict[str, Any]:
        task = self._task(task_id)
        if task["status"] == "done":
            raise ToolError(f"{task_id} is done and can no longer change")
        return task

    def _member(self, name: str) -> dict[str, Any]:
        if name not in self.state["members"]:
            raise ToolError(f"no team member named {name}")
        return self.state["members"][name]

    def _check_due(self, due: str) -> None:
        if due < TODAY:  # ISO dates compare as text
            raise ToolError(f"the due date {due} is before today ({TODAY})")

    def _ids(self, *statuses: str) -> list[str]:
        return sorted(k for k, v in self.state["tasks"].items() if v["status"] in statuses)

    # ------------------------------------------------------------------ requests

    def ask_start_task(self, rng: random.Random) -> Request | None:
        task_id, member = pick(rng, self._ids("backlog")), pick(rng, sorted(self.state["members"]))
        if task_id is None:
            return None
        title = self.state["tasks"][task_id]["title"]

        def plan() -> Plan:
            found = yield [("list_board_tasks", {"status": "backlog"})]
            target = next(t["task_id"] for t in found[0]["tasks"] if t["title"] == title)
            yield [("assign_board_task", {"task_id": target, "member": member})]
            moved = yield [("move_board_task", {"task_id": target, "status": "doing"})]
            return f"'{title}' ({target}) is now assigned to {member} and moved from {moved[0]['from']} to doing."

        ask = rng.choice(["I'm {m} and I'm picking up '{t}' from the backlog. Put it on me and start it.",
                          "Please assign '{t}' to {m} and move it into doing.",
                          "{m} here: let me take '{t}' and mark it in progress."])
        return Request(ask.format(m=member, t=title), plan())

    def ask_submit_for_review(self, rng: random.Random) -> Request | None:
        task_id = pick(rng, self._ids("doing"))
        if task_id is None:
            return None
        task = self.state["tasks"][task_id]
        member, note = task["assignee"], rng.choice(_NOTES)

        def plan() -> Plan:
            done = yield [("move_board_task", {"task_id": task_id, "status": "review"}),
                          ("comment_on_task", {"task_id": task_id, "author": member, "text": note})]
            count = done[1]["comments"]
            return f"{task_id} moved from {done[0]['from']} to review, with your comment ({count} on the task now)."

        ask = rng.choice(["{m} here. {i} is finished: send it to review and add the comment \"{n}\"",
                          "Move {i} to review for me ({m}), with this comment: \"{n}\""])
        return Request(ask.format(m=member, i=task_id, n=note), plan())

    def ask_close_reviewed(self, rng: random.Random) -> Request | None:
        if not self._ids("review"):
            return None

        def plan() -> Plan:
            found = yield [("list_board_tasks", {"status": "review"})]
            ids = [t["task_id"] for t in found[0]["tasks"]]
            yield [("move_board_task", {"task_id": i, "status": "done"}) for i in ids]
            titles = ", ".join(f"'{t['title']}' ({t['task_id']})" for t in found[0]["tasks"])
            return f"Moved to done: {titles}."

        return Request(rng.choice(["Everything in review has been approved. Mark it all as done.",
                                   "Close out the review column: move every task there to done.",
                                   "Reviews are finished, please move all review tasks to done."]), plan())

    def ask_create_task(self, rng: random.Random) -> Request | None:
        used = {v["title"] for v in self.state["tasks"].values()}
        title, member = pick(rng, [t for t in _TITLES if t not in used]), pick(rng, sorted(self.state["members"]))
        if title is None:
            return None
        priority = rng.choice(PRIORITIES)

        def plan() -> Plan:
            made = yield [("create_board_task", {"title": title, "priority": priority})]
            task_id = made[0]["task_id"]
            yield [("assign_board_task", {"task_id": task_id, "member": member})]
            return f"Created {task_id} '{title}' ({priority} priority) in the backlog and assigned it to {member}."

        ask = rng.choice(["Add a {p} priority task '{t}' and assign it to {m}.",
                          "New task please: '{t}', {p} priority, for {m}."])
        return Request(ask.format(p=priority, t=title, m=member), plan(), partial=(
            rng.choice(["Add a {p} priority task '{t}' and assign it to someone.",
                        "Create a {p} priority task '{t}' for the team."]).format(p=priority, t=title),
            "Sure. Who should it be assigned to?", rng.choice(["{m}.", "Give it to {m}."]).format(m=member)))

    def ask_due_date(self, rng: random.Random) -> Request | None:
        task_id = pick(rng, self._ids("backlog", "doing", "review"))
        if task_id is None:
            return None
        due = _plus_days(TODAY, rng.randint(2, 45))
        said = _spoken(rng, due)

        def plan() -> Plan:
            done = yield [("set_task_due_date", {"task_id": task_id, "due": due})]
            return f"'{done[0]['title']}' ({task_id}) is now due {done[0]['due']}."

        ask = rng.choice(["Set the due date of {i} to {d}.", "{i} needs to be finished by {d}, please update it."])
        return Request(ask.format(i=task_id, d=said), plan(), partial=(
            rng.choice(["Can you set a due date on {i}?", "Please give {i} a deadline."]).format(i=task_id),
            "Of course. What date should it be due?", rng.choice(["{d}.", "Make it {d}."]).format(d=said)))

    def ask_reassign(self, rng: random.Random) -> Request | None:
        task_id = pick(rng, self._ids("doing", "review"))
        if task_id is None:
            return None
        member = rng.choice(sorted(m for m in self.state["members"] if m != self.state["tasks"][task_id]["assignee"]))

        def plan() -> Plan:
            done = yield [("assign_board_task", {"task_id": task_id, "member": member})]
            return f"{task_id} now belongs to {member} (it was with {done[0]['previous']})."

        ask = rng.choice(["Hand {i} over to {m}, please.", "Reassign {i} to {m}."])
        return Request(ask.format(i=task_id, m=member), plan(), partial=(
            rng.choice(["{i} needs a new owner.", "Please reassign {i}."]).format(i=task_id),
            "Who should take it over?", f"{member}, please."))

    def ask_workload(self, rng: random.Random) -> Request | None:
        first, second = rng.sample(sorted(self.state["members"]), 2)

        def plan() -> Plan:
            found = yield [("list_board_tasks", {"assignee": first}), ("list_board_tasks", {"assignee": second})]
            lines = []
            for name, result in zip((first, second), found, strict=True):
                open_ = [f"'{t['title']}' ({t['status']})" for t in result["tasks"] if t["status"] != "done"]
                lines.append(f"{name}: " + (", ".join(open_) if open_ else "nothing open"))
            return "Open work — " + "; ".join(lines) + "."

        return Request(rng.choice(["What are {a} and {b} working on right now?",
                                   "Show me the open tasks of {a} and of {b}."]).format(a=first, b=second), plan())

    def ask_delete(self, rng: random.Random) -> Request | None:
        task_id = pick(rng, self._ids("backlog", "doing", "review"))
        if task_id is None:
            return None
        title = self.state["tasks"][task_id]["title"]

        def plan() -> Plan:
            found = yield [("list_board_tasks", {})]
            target = next(t["task_id"] for t in found[0]["tasks"] if t["title"] == title)
            yield [("delete_board_task", {"task_id": target})]
            return f"Deleted '{title}' ({target}) from the board."

        ask = rng.choice(["We dropped '{t}'. Please delete that task.", "Remove the task '{t}' from the board.",
                          "Delete '{t}', it's no longer needed."])
        return Request(ask.format(t=title), plan())

    def ask_idle_members(self, rng: random.Random) -> Request | None:
        def plan() -> Plan:
            team, doing = yield [("list_team_members", {}), ("list_board_tasks", {"status": "doing"})]
            busy = {t["assignee"] for t in doing["tasks"]}
            idle = [f"{m['name']} ({m['role']})" for m in team["members"] if m["name"] not in busy]
            if not idle:
                return "Everyone on the team has at least one task in progress."
            return "Nothing in progress for: " + ", ".join(idle) + "."

        return Request(rng.choice(["Who on the team has nothing in progress right now?",
                                   "Which team members are free, with no task in doing?"]), plan())
