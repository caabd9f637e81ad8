"""Writes a mailbox that reads like real work mail, for experiments/email_assistant.py to learn its owner's style.

    python scripts/make_mailbox.py --out=mail/sam.mbox [--threads=100] [--seed=0] [--unseen=DIR] [--unseen_count=8]

Thirteen colleagues write to Sam Lee about 15 kinds of work (meetings, budgets, reviews, travel, hiring, time off,
...), each with their own greeting, sign-off and length. Sam always answers alike: "Hi <first name>,", one to four
short, direct sentences, "Best,\nSam", then the message answered, quoted under "On <date>, <sender> wrote:". A
quarter of the threads go on: the colleague answers (quoting Sam's words) and Sam replies again. Replies are
threaded by In-Reply-To and References (every fifth by References only); a notice (IT, HR, ...) per five threads
goes unanswered. About one message in six has non-ASCII text (José, Zoë, café, €, "–"): quoted-printable.
--threads counts the threads colleagues start; --unseen=DIR also writes emails to Sam that the mailbox lacks
(DIR/unseen_1.eml, ...; half from strangers), to draft replies to. A seeded random.Random fills the templates'
slots (days, times, amounts, names): the same arguments write the same bytes. A thread (headers shortened):

    From: Ann Park <ann@example.com>      (documents.read('mbox_replies'): the prompt, with the reply's headers)
    Hi Sam,

    Could we grab 30 minutes on Tuesday to go over the hiring plan? I have a few open questions.
    Does 2:00 work for you?

    Thanks,
    Ann

    From: Sam Lee <sam@example.com>       (the completion: Sam's words, without the quote below them)
    Hi Ann,

    Tuesday is full for me, unfortunately. Could we do Thursday at 11:00 instead? Thirty minutes
    should be plenty for the hiring plan.

    Best,
    Sam
"""
import argparse
import collections
import email.message
import email.utils
import mailbox
import os
import random
import textwrap
import time

ME = "Sam Lee <sam@example.com>"
OWNER_GREETING = "Hi {first},"
OWNER_SIGNOFF = "Best,\nSam"
START = 1767225600  # 2026-01-01 00:00 UTC.
FANCY = 0.12  # Threads that write €, café, naïve, "–", José or Zoë; José's and Zoë's own carry their names.

# (address, greetings ("" for none), sign-off). Short names: "On <date>, <name> wrote:" fits in 78 columns.
COLLEAGUES = (
    ("Ann Park <ann@example.com>", ("Hi Sam,",), "Thanks,\nAnn"),
    ("Bo Chen <bo@example.com>", ("Hey Sam,", "Hi Sam,"), "Cheers,\nBo"),
    ("Cy Diaz <cy@example.com>", ("Sam,",), "- Cy"),
    ("Dana Kim <dana@example.com>", ("Hello Sam,",), "Kind regards,\nDana Kim\nFinance Manager"),
    ("Eli Novak <eli@example.com>", ("",), "Eli"),
    ("Fay Moore <fay@example.com>", ("Hi Sam,", "Hi Sam!"), "Thanks!\nFay"),
    ("Gus Reyes <gus@example.com>", ("Morning Sam,", "Hi Sam,"), "Gus Reyes\nIT Operations"),
    ("Hana Ito <hana@example.com>", ("Hello Sam,",), "Many thanks,\nHana"),
    ("Ivan Petrov <ivan@example.com>", ("Sam,", ""), "Regards,\nIvan"),
    ("José Álvarez <jose@example.com>", ("Hola Sam,", "Hi Sam,"), "Gracias,\nJosé"),
    ("Kim Walsh <kim@example.com>", ("Hi Sam,",), "Best wishes,\nKim\n--\nKim Walsh | Talent Acquisition"),
    ("Leo Grant <leo@example.com>", ("Hey Sam,", ""), "L."),
    ("Zoë Müller <zoe@example.com>", ("Hi Sam,",), "Danke,\nZoë"),
)
STRANGERS = (  # In the unseen emails only.
    ("Nora Quinn <nora@example.com>", ("Hi Sam,",), "Thanks a lot,\nNora"),
    ("Omar Haddad <omar@example.com>", ("Hello Sam,",), "Best regards,\nOmar Haddad\nSolutions Architect"),
    ("Paula Rossi <paula@example.com>", ("Sam,",), "- Paula"),
    ("Raj Mehta <raj@example.com>", ("Hey Sam,",), "Cheers,\nRaj"),
)
FAVOURITES = {"budget": "Dana", "expenses": "Dana", "hiring": "Kim", "onboarding": "Kim"}  # Who writes it most.
WORDS = dict(
    day=("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"), team=("platform", "data", "mobile", "search"),
    time=("9:30", "10:00", "11:00", "11:30", "1:30", "2:00", "3:00", "4:30"),
    month=("February", "March", "April", "May", "June", "July", "August", "September", "October", "November"),
    project=("Atlas", "Beacon", "Orion", "Juniper", "Falcon", "Harbor", "Nimbus", "Quartz"),
    city=("Berlin", "Lisbon", "Chicago", "Toronto", "Austin", "Paris", "Seoul", "Dublin"),
    person=("Priya", "Tom", "Lena", "Marcus", "Aisha", "Felix", "Mei", "Oscar"),
    customer=("Northwind", "Globex", "Initech", "Brightline", "Vandelay", "Oakridge Bank"),
    vendor=("Acme Cloud", "BluePeak", "Stackwise", "Printly", "Lumen Labs", "Corvid IT"),
    conf=("DevConf {city}", "PyData {city}", "QCon {city}", "Data Summit {city}"),
)
OPENERS = ("Hope your week is going well.", "Hope you had a good weekend.", "Quick question for you.",
           "Sorry for the late ping.", "Hope you're well.")
OWNER_OPENERS = ("Thanks for the note.", "Thanks for the heads-up.", "Good question.", "Thanks for asking.",
                 "Quick answer from my side.")
OWNER_CLOSERS = ("Let me know if anything changes.", "Shout if you need anything else from me.", "Happy to help.",
                 "Let me know how it goes.", "Happy to talk it through if you see it differently.")

# Per topic, "|" between alternatives: slot `item`; subjects; colleagues' asks; Sam's replies (each fits any ask of
# its topic); and for a thread that goes on, the colleague's answer to Sam "|" Sam's second reply.
Topic = collections.namedtuple("Topic", "items subjects asks replies more")
TOPICS = {name: Topic(*(field.split("|") for field in fields)) for name, fields in {
    "meeting": (
        "the {project} scope|the Q2 plan|the hiring plan|the migration timeline",
        "Quick sync on {item}?|Can we meet {day}?|30 minutes this week?",
        "Could we grab 30 minutes on {day} to go over {item}? I have a few open questions. Does {time} work for "
        "you?|I'd like to walk you through {item} before the leadership review. Are you free on {day} at "
        "{time}?|{other} and I want to pick your brain about {item}. Coffee at the {cafe} downstairs on {day}, {time}?",
        "{day} at {time} works for me. I'll send an invite with a video link in case one of us is remote. Bring the "
        "open questions and we'll get through them.|{day} is full for me, unfortunately. Could we do {day2} at {time2} "
        "instead? Thirty minutes should be plenty for {item}.|Happy to talk about {item}. {time} on {day} is fine, but "
        "I only have 20 minutes. Could you send your questions ahead?",
        "Great, thanks. Should I invite {other2} as well, or keep it small for now?|Let's keep it small this time. We "
        "can loop {other2} in once we have a plan, probably by the end of next week."),
    "budget": (
        "new monitoring tools|a contractor for six weeks|extra test devices|a training course",
        "Budget question: {item}|Can we afford {item}?|{project} budget",
        "Finance asks whether we still plan to spend {cur}{amount} on {item} this quarter. We are already {pct}% over "
        "on {project}. Should I keep it in the forecast?|I'm preparing the {month} budget request and want to include "
        "{item}. The quote is {cur}{amount}, more than we discussed. Are you OK with that?|Can we put {cur}{amount} "
        "toward {item}? It would save a lot of manual work on {project}. Finance needs to know by {day}.",
        "Yes, keep {item} in at {cur}{amount}. It pays for itself within a quarter, and I'm happy to explain that to "
        "Finance myself.|Let's hold off on {item} until next quarter. We are already over on {project}, and I don't "
        "want to reopen the budget now.|I can approve up to {cur}{amount2} for {item} right now. If the quote is "
        "higher, please ask for a smaller package first. What would we lose with it?",
        "Thanks. Finance also asked whether this is a one-off or recurring. What should I tell them?|Tell them it's a "
        "one-off for this year. We'll review it in the autumn planning round and decide then whether to keep it."),
    "status": (
        "the {project} launch|the data migration|the new billing flow|the search rewrite",
        "{project} status|Status update: {item}|Where are we on {item}?",
        "Quick update on {item}: we are about {pct0}% done, and the main risk is the API change from {other}'s team. "
        "Are you still comfortable telling leadership {date}?|Leadership asked me for a date for {item}. The team says "
        "{date} if nothing else slips. Can I give them that?|We lost {n} days on {item} to the test environment "
        "outage. Everything else is on track. Should we still announce {date}?",
        "Let's keep {date}. We still have some buffer, and I'd rather not move the date twice. Please tell me right "
        "away if anything slips again.|I'd add a week of buffer and tell them {date2} instead. It's easier to deliver "
        "early than to explain another delay.|{date} is fine with me if the team agrees. Can you send me a two-line "
        "summary of the risks by {day}? I'll forward it to leadership.",
        "Thanks. The team asked whether they can skip the demo on {day} to focus on the release. OK?|Yes, skip the "
        "demo this week. Let's do a proper one after the release instead; I'll book the slot."),
    "review": (
        "the design doc for {project}|my pull request for the retry logic|the {project} API spec|the on-call runbook",
        "Review request: {item}|Could you look at {item}?|Feedback on {item}?",
        "Could you review {item} when you have a moment? I'm mostly unsure about the rollout section. I'd like to wrap "
        "it up by {day}.|I've shared {item} with you. The error handling part is the one I'd like your eyes on. Any "
        "chance you can get to it before {day}?|Sorry if this is a {naive} question, but should {other} also review "
        "{item}? I'd like feedback before {day}.",
        "I'll review it tomorrow morning. From a first skim it looks solid, but the rollout part needs a clearer "
        "fallback plan.|I can't get to it before {day}, I'm afraid. Could {other2} do the first pass? I'll take a "
        "final look early next week.|Thanks for sharing. I left a few comments already, mostly about naming and the "
        "rollback steps. Nothing blocking, so go ahead once you've addressed them.",
        "Thanks for the comments. I disagree on the rollback part, though. Can we talk it through?|Sure, let's talk it "
        "through. Grab 15 minutes in my calendar tomorrow; anything after {time} works, and bring your alternative."),
    "travel": (
        "the {city} customer visit|the sales kickoff in {city}|the partner workshop in {city}",
        "Travel to {city}|Trip approval: {item}|Flights for {item}",
        "I'd like to go to {item} on {date}. Flights and hotel come to about {cur}{amount}. Can you approve the trip "
        "so I can book this week?|For {item}, the cheapest flights leave {day} evening and cost {cur}{amount} with the "
        "hotel. Is that fine, or should I take the train?|Are you coming to {item} as well? If so, I'd book us on the "
        "same flight, about {cur}{amount} each. Prices go up after {day}.",
        "Approved, go ahead and book it. {cur}{amount} is within the travel budget; just keep the receipts for the "
        "expense report.|Please check whether one night fewer brings it under {cur}{amount2}. If not, book it anyway; "
        "the {city} trip is worth it.|Who else from the team is going? If {other} is already there, one of us is "
        "enough.",
        "Thanks! Should I book the hotel near the office or near the venue?|Near the venue is better; you'll save time "
        "every morning. Keep it under {cur}{hotel} a night if you can."),
    "hiring": (
        "senior backend engineer|data analyst|product designer|engineering intern",
        "Interview panel for {person}|Candidate: {person}|Hiring: {item}",
        "Can you join the interview panel for {person} on {day} at {time}? It's for the {item} role, and we still need "
        "someone for system design.|{person}, our {item} candidate, is coming in on {day} at {time}. We are one "
        "interviewer short. Could you cover the system design round?|Would you have an hour on {day} for {person}'s "
        "final interview? The {item} role has been open for {n2} weeks, and the team likes this one.",
        "Yes, put me on the panel for {person}. Please send me the CV and the notes from the earlier rounds the day "
        "before.|I can't make {day}, sorry. {other2} has run that round before and would be a good fit. If that "
        "doesn't work, I could do {day2} morning.|Happy to help with {person}. I have a hard stop after 45 minutes, "
        "though. Which scorecard are we using for the {item} role?",
        "Feedback is in and everyone is positive. Shall I ask HR to prepare an offer?|Yes, go ahead with the offer. "
        "Aim for the middle of the band, and let me know if they come back with a counter."),
    "deadline": (
        "the {project} release notes|the security questionnaire|the board slides|the Q2 OKR draft",
        "Deadline for {item}|Can we push {item}?|{item}: due {day}",
        "The deadline for {item} is {day}, and I'm worried we won't make it. {other} is out sick. Could we move it to "
        "{day2}?|Is the {day} deadline for {item} firm? We could deliver a rough version on time or a polished one {n} "
        "days later.|I need a few more days for {item}. Finance sent the numbers late. Would {day2} be OK?",
        "Let's move it to {day2}. A solid version later beats a rushed one, and I'll let the stakeholders know "
        "today.|{day} is firm, unfortunately, because it goes to the board the same afternoon. Send what you have by "
        "then and mark the open parts clearly.|Could you split it instead? The summary on {day}, the details by "
        "{day2}. That keeps everyone unblocked and gives you the extra time.",
        "Got it. Could you look at a draft before I send it?|Yes, send it over by 9 and I'll review it before lunch. "
        "Keep the summary to one page so people actually read it."),
    "it": (
        "my laptop battery|the VPN client|my docking station|my laptop keyboard",
        "IT issue: {item}|Problem with {item}|Approval for IT ticket {ticket}",
        "Sorry to bother you, but {item} has been failing for a week, and a replacement needs manager approval. It "
        "costs {cur}{price}. Could you approve the ticket?|Heads-up: {item} died again this morning and I lost an hour "
        "of work. IT can replace it by {day} if you sign off.|IT wants a manager's OK before they replace {item}. The "
        "ticket is {ticket}. Can you approve it today?",
        "Approved; I'll sign the ticket this afternoon. Losing hours to broken hardware costs us far more than a "
        "replacement.|Go ahead, I've approved it. In the meantime, borrow the spare laptop from {other} so you are not "
        "stuck.|I approved it just now. Could you ask IT whether they can also upgrade the memory while they're at it? "
        "We keep hitting the same problem across the team.",
        "Thanks! IT says the new one arrives {day}. Can I work from home until then?|Of course, work from home until "
        "it arrives. Just keep your calendar up to date so people know where to find you."),
    "offsite": (
        "the team offsite|the spring offsite|the end-of-quarter party|the team dinner",
        "Offsite planning|{item}: venue options|Date for {item}",
        "I'm planning {item} for {date}. There is a venue in the city for {cur}{amount} and one by the lake for a bit "
        "more. Which do you prefer?|For {item}, {n2} people have confirmed so far. The venue wants a deposit of "
        "{cur}{amount2} by {day}. Should I go ahead?|Do you have a preference for the date of {item}? {date} works for "
        "most people, but {other} is travelling that week.",
        "Go ahead and book it for {date}. The city option is fine; people can get there without a car. Please keep the "
        "total under {cur}{amount}.|Please hold off until {day2}. I want to check whether Finance still has money for "
        "it this quarter.|Happy with either option. Can you send a quick poll to the team? Whatever most people prefer "
        "is fine with me, as long as we stay under {cur}{amount}.",
        "Booked! Would you say a few words at the start?|Sure, I'll do a five-minute welcome. Put me on the agenda "
        "right before lunch, and tell me how long I have."),
    "vendor": (
        "the new CI service|office printers|cloud backup|the translation service",
        "Quote from {vendor}|{vendor} quote for {item}|Vendor decision: {item}",
        "{vendor} sent their quote for {item}: {cur}{amount} a year, {pct}% off if we sign by {date}. The other offer "
        "is cheaper but has worse support. What do you think?|We got two quotes for {item}. {vendor} is at "
        "{cur}{amount}, the other one at {cur}{amount2} but without onboarding. Which way would you go?|{vendor} wants "
        "an answer on {item} by {day}. Their price is {cur}{amount} for the first year. Should I sign?",
        "Let's go with {vendor}. Good support is worth the difference. Please ask them to confirm the price in writing "
        "before we sign.|Ask {vendor} for a better deal first. {cur}{amount} is a lot for a first year, and they know "
        "we are comparing offers.|Before we decide, can you check with {other} how the trial went? If the team liked "
        "it, I'm fine with {cur}{amount}.",
        "Legal wants to review the contract first, which takes about a week. Is that OK with you?|That's fine, a week "
        "is not a problem. Let {vendor} know so they keep the offer open until then."),
    "escalation": (
        "failed exports|slow dashboards|a billing error|missing emails|login timeouts",
        "Escalation: {customer}|{customer} is unhappy|Urgent: {customer} and {item}",
        "{customer} escalated the {item} to their account manager this morning. They want a call with someone senior "
        "by {day}. Can you join?|Heads-up: {customer} has had {item} for {n} days, and they are threatening to pause "
        "the renewal. Could you call their CTO?|{customer} is asking for a credit because of {item} last week. They "
        "mention {cur}{amount2}. How should we respond?",
        "Thanks for flagging this. I can talk to them on {day} at {time}; please set it up. Send me a short timeline "
        "of the issue before the call.|Let's not offer anything before the fix is out. I'll call their CTO today and "
        "explain where we are.|I'll call them this afternoon. Can you find out who on their side is most affected? I'd "
        "like to understand how bad it really is for them.",
        "The fix is deployed and they confirmed it works. Should we still offer something?|Yes, offer them a month of "
        "the premium plan for free. It costs us little and shows we took it seriously."),
    "onboarding": (
        "backend engineer|data analyst|designer|support lead",
        "Onboarding {person}|{person} starts {day}|New starter next week",
        "{person} starts on {day} as our new {item}. The laptop and accounts are ready. Could you take the welcome "
        "meeting at {time}?|Who should be the onboarding buddy for {person}, our new {item}? I was thinking of "
        "{other}, but they are busy with {project}.|I'm writing the onboarding plan for {person}. Is there anything "
        "you want our new {item} to read in the first {n} days?",
        "I'll take the welcome meeting at {time}. Please make sure {person} gets access to {project} on the first day; "
        "that's always the slowest part.|Let's make {other2} the buddy; they did a great job last time. I'll do a "
        "short welcome on {day} and a proper one-on-one later in the week.|Thanks for organising this. The "
        "architecture overview and the {project} runbook are the most important reads; I'll walk them through both.",
        "Their laptop won't arrive until {day2}. Should we push the start date?|No, keep the start date. They can use "
        "the spare laptop for a few days and spend the time reading and meeting people."),
    "conference": (
        "our move to {project}|testing in production|scaling the {team} team|data contracts",
        "Talk at {conf}?|{conf}: speaking slot|CFP for {conf}",
        "The organisers of {conf} asked whether one of us could talk about {item} on {date}. Would you be up for it, "
        "or should I ask {other}?|I'd like to submit a talk to {conf} about {item}. The CFP closes on {day}. Could you "
        "read my abstract first?|{conf} offers us a booth for {cur}{amount}, with a talk about {item} included. I "
        "think it's worth it. What do you think?",
        "I'd love to see a talk on {item} from us. Please go ahead, and send me the abstract before it goes in. Travel "
        "is covered if it gets accepted.|I can't make {conf} myself this time. {other2} would be a great speaker on "
        "{item}, so please ask them first.|Let's do it, but keep the talk about {item} and leave the roadmap out. Who "
        "would co-present?",
        "It got accepted! Would you do a dry run with me the week before?|Congratulations, well deserved! Yes, let's "
        "do a dry run. Book an hour in my calendar any afternoon that week."),
    "expenses": (
        "the {city} trip|the team dinner|the conference tickets|the client lunch with {customer}",
        "Expense report: {item}|Expenses waiting for approval|Receipt question",
        "My expense report for {item} is waiting for your approval. The total is {cur}{amount2}, and Finance closes "
        "the month on {day}.|I lost one receipt from {item}, a taxi for about {cur}{small}. Can I still claim "
        "it?|Finance says my report for {item} is over the limit by {cur}{small}. It was the only hotel left. Can you "
        "approve it?",
        "Approved just now. Next time, please add a one-line note for anything unusual; it saves a round with "
        "Finance.|I'll approve it today. Please add a short note about the {cur}{small} so Finance doesn't send it "
        "back.|Can you send me the breakdown first? The total for {item} looks higher than I expected. I'll approve it "
        "right after.",
        "Thanks! Finance also asks which cost centre to use. Is it {project}?|Yes, book it on {project}. Everything "
        "for that work belongs there, and it keeps the quarterly numbers clean."),
    "timeoff": (
        "",
        "Time off in {month}|Holiday request|Days off around {date}",
        "I'd like to take {n} days off starting {date}. {other} has agreed to cover my on-call shifts. Is that OK with "
        "you?|Could I take the week of {date} off? My family is visiting, and I'd like to show them around.|I have "
        "{n2} days of holiday left that expire in {month2}. Could I take some of them around {date}?",
        "Of course, enjoy the time off. Please put it in the shared calendar and set an out-of-office message.|That "
        "should be fine, but {date} is close to the {project} release. Could you hand your open tasks to {other2} "
        "before you go?|Yes, take them; you've earned it. Let's just make sure someone can answer {project} questions "
        "while you're away. Who would you suggest?",
        "Booked it. Should I still join the planning meeting on {day} remotely?|No, please don't; you're on holiday. "
        "I'll send you the notes afterwards, and we can catch up when you're back."),
}.items()}
NOTICES = (  # (sender, greeting, sign-off, subjects, texts): mail nobody answers.
    ("IT Helpdesk <it@example.com>", "Hello,", "IT Helpdesk\nhttps://help.example.com",
     "Scheduled maintenance on {day}|Your ticket {ticket} was resolved",
     "The VPN and email will be down on {day} from {time} for about two hours while we upgrade the servers. Please "
     "save your work and log out beforehand.|Your ticket {ticket} was marked as resolved. If the problem comes back, "
     "reply to this email within 7 days to reopen it."),
    ("Company News <news@example.com>", "Hi all,", "Company News", "{month} all-hands|This week at the company",
     "The {month} all-hands takes place on {date} at {time}, in the main hall and online. {other} will present the "
     "{project} results {dash} bring your questions.|Welcome to {person}, who joined the {team} team this week. The "
     "{project} team shipped its first release {dash} congratulations! The {cafe} now opens at 8:00."),
    ("Facilities <facilities@example.com>", "Dear all,", "Facilities Team", "Office closed on {date}|Desk moves",
     "The office will be closed on {date} for maintenance of the heating. Please plan deliveries and visitors "
     "accordingly.|The {team} team moves to the third floor on {day}. Please pack your desk by {time} and label your "
     "boxes."),
    ("HR Team <hr@example.com>", "Hello,", "People & HR", "Reminder: {month} timesheets|Open enrolment",
     "Please submit your {month} timesheet by {day}. Late timesheets delay payroll for everyone.|Open enrolment for "
     "next year's benefits runs until {date}. If you change nothing in the HR portal, your current plan continues."),
)


def first_name(address):
  """The first word of an address's display name: "Ann Park <ann@example.com>" -> "Ann"."""
  name, addr = email.utils.parseaddr(address)
  return name.split()[0] if name.strip() else addr.split("@")[0].capitalize()


def message(sender, to, subject, body, when, message_id, reply_to=None, references=None, cte=None):
  """An EmailMessage sent at `when` (seconds since the epoch); `cte` as set_content takes it (None: its choice)."""
  message = email.message.EmailMessage()
  message["From"], message["To"], message["Subject"] = sender, to, subject
  message["Date"] = email.utils.formatdate(when, usegmt=True)
  message["Message-ID"] = message_id
  if reply_to:
    message["In-Reply-To"] = reply_to
  if references:
    message["References"] = references
  message.set_content(body, cte=cte)
  return message


def _mail(sender, to, subject, body, when, message_id, reply_to=None, references=None):
  """A message whose non-ASCII body is quoted-printable (ASCII, in lines of at most 78, stays 7bit)."""
  return message(sender, to, subject, body, when, message_id, reply_to, references,
                 cte=None if body.isascii() else "quoted-printable")


def _slots(rng, topic, sender):
  """The slot values of one thread (or notice), drawn in a fixed order."""
  fancy = rng.random() < FANCY  # Other threads stay ASCII, unless José or Zoë writes.
  s = {key: rng.choice(values) for key, values in WORDS.items()}
  names = [first_name(p[0]) for p in COLLEAGUES if p[0] != sender and (fancy or first_name(p[0]).isascii())]
  s["other"], s["other2"] = rng.sample(names, 2)
  s["day"], s["day2"] = rng.sample(WORDS["day"], 2)
  s["time"], s["time2"] = rng.sample(WORDS["time"], 2)
  month, day = rng.randrange(len(WORDS["month"]) - 1), rng.randint(2, 20)
  s.update(month=WORDS["month"][month], month2=WORDS["month"][month + 1], date=f"{WORDS['month'][month]} {day}",
           date2=f"{WORDS['month'][month]} {day + 7}")
  amount = rng.randrange(12, 96) * 100
  s.update(amount=f"{amount:,}", amount2=f"{rng.randrange(3, amount // 100) * 100:,}", small=rng.randint(18, 95),
           hotel=rng.choice((150, 180, 200, 220)), pct=rng.choice((5, 8, 10, 12, 15)), pct0=rng.randrange(55, 90, 5),
           price=rng.randrange(120, 480, 10), n=rng.randint(2, 5), n2=rng.randint(3, 9),
           ticket=f"IT-{rng.randint(1000, 9999)}", cafe="café" if fancy else "cafe",
           naive="naïve" if fancy else "naive", dash="–" if fancy else "-", cur="€" if fancy else "$")
  s["conf"] = s["conf"].format(**s)
  s["item"] = rng.choice(TOPICS[topic].items).format(**s) if topic else ""
  return s


def _wrap(text):
  """One paragraph, capitalised and wrapped at 72 columns as plain-text mail clients send it."""
  return textwrap.fill(text[:1].upper() + text[1:], 72, break_long_words=False, break_on_hyphens=False)


def _attribution(when, sender, body):
  """The line above a quoted message, and the message quoted."""
  quoted = "".join(f"> {line}\n" if line else ">\n" for line in body.splitlines())
  return f"\nOn {email.utils.formatdate(when, usegmt=True)}, {sender} wrote:\n{quoted}"


def _colleague_text(rng, person, text, greet=True):
  """A colleague's words: their greeting (or none), the text, their sign-off."""
  greeting = rng.choice(person[1]) if greet else ""
  return (f"{greeting}\n\n" if greeting else "") + f"{_wrap(text)}\n\n{person[2]}\n"


def _owner_text(rng, person, text):
  """Sam's words: always the same greeting and sign-off around one to four sentences."""
  sentences = sum(text.count(end) for end in (". ", "? ", "! ")) + 1
  # An opener, a closer, or both: sometimes, and always where a reply is short (Sam writes 25 words or more).
  if sentences < 4 and not text.startswith("Thanks") and (len(text.split()) < 22 or rng.random() < 0.3):
    text, sentences = f"{rng.choice(OWNER_OPENERS)} {text}", sentences + 1
  if sentences < 4 and (len(text.split()) < 25 or rng.random() < 0.4):
    text = f"{text} {rng.choice(OWNER_CLOSERS)}"
  return f"{OWNER_GREETING.format(first=first_name(person[0]))}\n\n{_wrap(text)}\n\n{OWNER_SIGNOFF}\n"


def _office(rng, when):
  """`when`, or the next working morning if it falls outside Monday to Friday, 8:00 to 18:00 UTC."""
  now = time.gmtime(when)
  if now.tm_wday < 5 and 8 <= now.tm_hour < 18:
    return when
  day = when - when % 86400 + (86400 if now.tm_hour >= 8 else 0)
  while time.gmtime(day).tm_wday >= 5:
    day += 86400
  return day + 8 * 3600 + rng.randrange(0, 5400, 60)


def _email(rng, topic, person, slots):
  """(subject, body) of a colleague's first email on `topic`."""
  text = rng.choice(TOPICS[topic].asks)
  if rng.random() < 0.3:
    text = f"{rng.choice(OPENERS)} {text}"
  subject = rng.choice(TOPICS[topic].subjects).format(**slots)
  return subject[:1].upper() + subject[1:], _colleague_text(rng, person, text.format(**slots))


def messages(threads=100, seed=0):
  """The mailbox's messages, in order: the `threads` threads colleagues start, notices between them."""
  rng = random.Random(seed)
  out, when, replies, topic = [], START + 8 * 3600, 0, None
  for i in range(threads):
    when = _office(rng, when + rng.randrange(20, 240, 5) * 60)
    if i % 5 == 4:
      sender, greeting, signoff, subjects, texts = rng.choice(NOTICES)
      k, slots = rng.randrange(2), _slots(rng, None, sender)
      body = f"{greeting}\n\n{_wrap(texts.split('|')[k].format(**slots))}\n\n{signoff}\n"
      out.append(_mail(sender, ME, subjects.split("|")[k].format(**slots), body, when, f"<n{i}.{seed}@example.com>"))
      when = _office(rng, when + rng.randrange(20, 120, 5) * 60)
    topic = rng.choice([name for name in TOPICS if name != topic])  # Not the same kind twice in a row.
    favourite = [p for p in COLLEAGUES if first_name(p[0]) == FAVOURITES.get(topic)]
    person = favourite[0] if favourite and rng.random() < 0.4 else rng.choice(COLLEAGUES)
    slots = _slots(rng, topic, person[0])
    subject, body = _email(rng, topic, person, slots)
    ids, log = [f"<t{i}.0.{seed}@example.com>"], [(person[0], body, when)]  # log: (sender, body, date) so far.
    out.append(_mail(person[0], ME, subject, body, when, ids[0]))
    turns = [rng.choice(TOPICS[topic].replies)]
    if rng.random() < 0.25:  # The colleague answers, Sam replies again.
      turns += TOPICS[topic].more
    for k, text in enumerate(turns):
      when = _office(rng, when + rng.randrange(15, 240, 5) * 60)
      answered_from, answered, sent = log[-1]
      if k % 2 == 0:
        own = _owner_text(rng, person, text.format(**slots))
        sender, to, body = ME, person[0], own + _attribution(sent, answered_from, answered)
      else:  # Quoting Sam's own words, not the older message below them.
        sender, to = person[0], ME
        body = _colleague_text(rng, person, text.format(**slots), greet=rng.random() < 0.5)
        body += _attribution(sent, ME, own)
      ids.append(f"<t{i}.{k + 1}.{seed}@example.com>")
      replies += 1
      out.append(_mail(sender, to, f"Re: {subject}", body, when, ids[-1],
                       reply_to=None if replies % 5 == 0 else ids[-2], references=" ".join(ids[:-1])))
      log.append((sender, body, when))
  return out


def write(path, threads=100, seed=0, found=None):
  """Writes the mailbox (or the EmailMessages `found`) to `path`, replacing it; returns the number of messages."""
  found = messages(threads, seed) if found is None else found
  if os.path.exists(path):
    os.remove(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  box = mailbox.mbox(path)
  try:
    for message in found:
      entry = mailbox.mboxMessage(message)
      sent = email.utils.parsedate_to_datetime(message["Date"]).timetuple()
      entry.set_from(email.utils.parseaddr(message["From"])[1], sent)  # Not today's date: the same bytes.
      box.add(entry)
  finally:
    box.close()
  return len(found)


def unseen(directory, count=8, seed=0, threads=100):
  """Writes `count` emails to Sam that the mailbox of (`threads`, `seed`) does not hold, DIR/unseen_N.eml, on
  different topics; every other one from a stranger. Returns their paths."""
  known = messages(threads, seed)
  bodies, when = {m.get_content() for m in known}, known[-1]["Date"].datetime.timestamp() if known else START
  rng = random.Random(seed + 1000)  # Other draws than the mailbox's.
  topics = rng.sample(sorted(TOPICS), len(TOPICS))
  os.makedirs(directory, exist_ok=True)
  paths = []
  for k in range(count):
    person = rng.choice(COLLEAGUES) if k % 2 == 0 else STRANGERS[k // 2 % len(STRANGERS)]
    topic = topics[k % len(topics)]
    subject, body = _email(rng, topic, person, _slots(rng, topic, person[0]))
    while body in bodies:  # Never an email the model has trained on.
      subject, body = _email(rng, topic, person, _slots(rng, topic, person[0]))
    when = _office(rng, when + rng.randrange(30, 300, 5) * 60)
    paths.append(os.path.join(directory, f"unseen_{k + 1}.eml"))
    with open(paths[-1], "wb") as f:
      f.write(_mail(person[0], ME, subject, body, when, f"<u{k + 1}.{seed}@example.com>").as_bytes())
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--out", default="mail/sam.mbox", help="The mbox file to write.")
  parser.add_argument("--threads", type=int, default=100, help="How many threads colleagues start.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the random draws.")
  parser.add_argument("--unseen", default=None, help="Also write emails that are not in the mailbox to this folder.")
  parser.add_argument("--unseen_count", type=int, default=8, help="How many unseen emails.")
  args = parser.parse_args()
  count = write(args.out, args.threads, args.seed)
  print(f"Wrote {count} messages to {args.out} ({os.path.getsize(args.out) / 1e3:.0f} KB).")
  if args.unseen:
    paths = unseen(args.unseen, args.unseen_count, args.seed, args.threads)
    print(f"Wrote {len(paths)} emails not in the mailbox to {args.unseen}.")


if __name__ == "__main__":
  main()
