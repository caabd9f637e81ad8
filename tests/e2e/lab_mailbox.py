"""A second demo mailbox, a university research lab's, written differently from scripts/make_mailbox.py.

    python tests/e2e/lab_mailbox.py OUT.mbox [THREADS] [SEED]

The email assistant was designed around make_mailbox.py's office mail; to measure it on mail it was not designed
around, this module writes another owner's mailbox behind the same interface (OWNER, OWNER_GREETING, OWNER_SIGNOFF,
first_name, messages, write, unseen). Kim Ode runs a lab: students, postdocs, collaborators abroad, an administrator
and a journal editor write about drafts, reviews, the cluster, travel, grants, marking, theses, data and code. Kim
answers in one to three informal sentences, one unwrapped paragraph between "Hello <first>!" and "Cheers,\nKim".
Threads are built differently too: Outlook-style quotes ("-----Original Message-----", headers, the text unquoted)
or the whole thread ">"-quoted under three clients' "On <date>, <name> wrote:"; a third go on (Kim replies twice);
text and HTML alternatives; non-ASCII bodies in base64 or quoted-printable; unanswered list mail; a few replies
threaded by References only; mail at any hour, from several time zones. A seeded random.Random draws everything:
the same arguments write the same bytes.
"""
import collections
import datetime
import email.message
import email.utils
import html
import importlib.util
import os
import random
import sys
import textwrap

OWNER = "Kim Ode <kim.ode@lab.example.org>"
ME = OWNER  # make_mailbox.py's name for it.
OWNER_GREETING = "Hello {first}!"
OWNER_SIGNOFF = "Cheers,\nKim"
START = 1756711800  # Monday 1 September 2025, 07:30 UTC: an academic year starts.
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()

# width: where their client wraps paragraphs (0: it does not); client: how they quote (outlook: with HTML).
Person = collections.namedtuple("Person", "address greetings signoff roles width tz client lower",
                                defaults=(72, 0, "gmail", False))
PEOPLE = (
    Person("Søren Madsen <soren.madsen@lab.example.org>", ("Hi Kim,",), "Thanks!\nSøren", "student ta"),
    Person("Inès Dubois <ines.dubois@lab.example.org>", ("Kim,", "Hi Kim,"), "Inès", "postdoc", 0, 0, "apple"),
    Person("Łukasz Nowak <lukasz.nowak@lab.example.org>", ("Dear Kim,",), "Best regards,\nŁukasz Nowak", "student", 66),
    Person("Priya Raman <priya.raman@lab.example.org>", ("Hey Kim!", "Hi Kim,"), "P.", "student ta", 0, 0, "apple"),
    Person("Tomás Ferreira <tferreira@dei.uc.example.pt>", ("Olá Kim,", "Dear Kim,"), "Abraço,\nTomás", "collab"),
    Person("Margaret Owusu <m.owusu@informatics.example.ac.uk>", ("Dear Dr Ode,", "Dear Kim,"),
           "Kind regards,\nMargaret Owusu\nDepartment Administrator | School of Informatics", "admin", 0, 0, "outlook"),
    Person("Hiroshi Tanaka <tanaka@i.kyoto-u.example.jp>", ("Dear Kim,",), "Best wishes,\nHiroshi", "collab", 72, 9),
    Person("Elena Petrova <elena.petrova@jls-journal.example.com>", ("Dear Dr Ode,",),
           "Sincerely,\nElena Petrova\nAssociate Editor, Journal of Learning Systems", "editor", 0, 1, "outlook"),
    Person("Ben Carter <ben.carter@lab.example.org>", ("hi kim", "kim -"), "ben", "student ta", 0, 0, "gmail", True),
    Person("Ayşe Yılmaz <ayse.yilmaz@lab.example.org>", ("Hi Kim,",), "Cheers,\nAyşe", "postdoc", 72, 0, "apple"),
    Person("Dmitri Volkov <volkov@cs.tu-darmstadt.example.de>", ("Kim,",), "-- Dmitri", "collab", 72, 1),
    Person("Chloé Martin <chloe.martin@lab.example.org>", ("Hi Kim!",), "Merci !\nChloé", "student", 72, 0, "apple"),
)
STRANGERS = (  # In the unseen emails only.
    Person("Ólafur Jónsson <olafur@hi.example.is>", ("Dear Kim,",), "Kveðja,\nÓlafur", "collab"),
    Person("Amara Nwosu <amara.nwosu@lab.example.org>", ("Hi Kim,",), "Thanks so much,\nAmara", "student", 0),
    Person("Yuki Sato <y.sato@jls-journal.example.com>", ("Dear Dr Ode,",), "With best regards,\nYuki Sato\nEditor",
           "editor", 0, 9, "outlook"),
    Person("Nils Ågren <nils.agren@kth.example.se>", ("Hej Kim,",), "/Nils", "collab", 72, 1, "apple"),
)
WORDS = dict(
    day=DAYS[:5], time=("9:30", "10:00", "11:30", "13:00", "14:00", "15:30", "16:00"),
    conf=("NeurIPS", "ICML", "ICLR", "ACL", "AISTATS", "UAI"), room=("2.14", "G.07", "4.31", "1.02"),
    city=("Montréal", "Vienna", "Kraków", "São Paulo", "Zürich", "Kyoto", "Lisbon", "Vancouver"),
    paper=("the sparse attention paper", "the active learning draft", "the benchmark paper", "the calibration paper"),
    dataset=("the clinical notes corpus", "the traffic camera data", "the bird song recordings", "the satellite tiles"),
    course=("Machine Learning 2", "Probabilistic Modelling", "Intro to Programming", "Data Mining"),
    kit=("a 4 TB NVMe drive", "an eye tracker", "two 27-inch monitors", "a Jetson Orin board", "a GPU workstation"),
    grant=("the EPSRC interim report", "the Leverhulme report", "the Horizon Europe periodic report"),
    rg=("the Mamba paper", "the scaling laws paper", "the DPO paper", "the grokking paper", "the RoPE paper"),
    topic=("robust optimisation", "causal representation learning", "probabilistic numerics", "federated learning"),
    speaker=("Dr Abena Osei", "Prof. Jonas Berg", "Dr Wei Zhang", "Prof. Lucía Herrera", "Dr Kofi Mensah"),
    title=("Sharpness-Aware Training Revisited", "On the Limits of In-Context Learning", "Calibrated Graph Networks"),
    fellowship=("Marie Curie fellowship", "Schmidt AI fellowship", "Turing placement"),
)
OPENERS = ("Hope the term is going well!", "Quick one.", "Hope you had a good weekend.", "Sorry to bother you again.")
NOTICES = (  # (list, List-Id, subjects, texts): list mail, HTML too, that nobody answers.
    ("Informatics Seminars <seminars@lists.informatics.example.ac.uk>", "<seminars.lists.informatics.example.ac.uk>",
     "Seminar this {day}: {speaker}|Today at {time}: {speaker} on {topic}",
     "Dear all,\n\nThis week's seminar is given by {speaker}, on {topic}: {day}, {time}, room {room}, with coffee "
     "before. All welcome!\n\nThe Seminar Committee|Reminder: {speaker} speaks about {topic} today at {time} in room "
     "{room}. The talk is also streamed on Teams.\n\n--\nInformatics Seminars"),
    ("School Office <school-office@informatics.example.ac.uk>", "<staff.informatics.example.ac.uk>",
     "Fire alarm test on {day}|Marks deadline: {date}",
     "Dear colleagues,\n\nThe weekly fire alarm test moves to {day} at {time} this week. There is no need to leave the "
     "building.\n\nSchool Office|Dear colleagues,\n\nPlease enter all coursework marks for {course} and the other "
     "autumn courses by {date}. Late marks delay the exam boards.\n\nSchool Office"),
)

# A topic per paragraph: "name: the roles that write about it", then one field a line (a line indented further goes
# on): subjects, asks (one starting "@role " is for that role only), Kim's replies (each fits any ask), and for a
# thread that goes on, "their answer|Kim's second reply". "|" separates alternatives.
TOPIC_TEXT = """
paper: student postdoc collab
  Draft: {paper}|New version of {paper}|{paper} - ready for a look?
  I've pushed a new draft of {paper} to Overleaf. The experiments are done, but the related work is thin. Could you look
    at it before {day}?|Attached is {paper} with the new introduction and the ablation on {dataset}. OK to send it to
    the co-authors after your pass?
  Great, thanks - I'll read it tomorrow morning and leave comments straight in Overleaf. Happy to jump on a call
    afterwards if anything needs discussing.|Nice progress! I'm buried in admin until {day}, so my comments will come
    then - is that still early enough?|Happy to read it this week. Could you flag the parts you're least sure about, so
    I start there?
  Thanks! Should the main table show the mean over {n} seeds or the best run? {other} says the best run is common at
    {conf}.|Mean over seeds with the spread, please - best-of-{n} isn't something I want our names on. Happy to write
    the sentence explaining it.

review: editor
  Invitation to review JLS-2025-{ms}|JLS-2025-{ms}: reviewer needed
  I would like to invite you to review manuscript JLS-2025-{ms}, "{title}", submitted to the Journal of Learning
    Systems. Would you be able to send a report by {date}?|Manuscript JLS-2025-{ms}, "{title}", is within your area of
    expertise, and two reviewers have declined. Could you review it by {date}? I would be most grateful.
  Happy to review it - send the invitation through the system and I'll accept there. {date} should be fine.|I'd love to
    help, but I'm at capacity until {month}. Could a later date work? If not, {postdoc} from my group would be an
    excellent reviewer.|Sure, I can take it on. Is it OK if I co-review with a PhD student of mine? I'd sign the report
    myself.
  Thank you very much. I have sent the formal invitation; the reviewer guidelines are linked in it.|Got it, thanks -
    accepted just now. The report will be with you by {date}, hopefully sooner.

reading: student postdoc
  Reading group on {day}?|Reading group: presenter needed|RG slot on {date}
  Would you be up for leading reading group on {day}? {other} had to drop out. People keep asking about {rg}, if you
    need an idea.|The reading group has one slot left, on {date}. You mentioned {rg} a while ago - would you take it? No
    slides needed.
  Happy to do it - let's go with {rg}. Can you book room {room} and send the announcement?|I can't do {day}, sorry - I'm
    examining a thesis. Could I swap with whoever has the week after?|Sure, count me in. I'll send the paper to the list
    by the weekend so people have time to read it.
  Brilliant, thanks! Should I order pizza, or is it a coffee-and-biscuits week?|Coffee and biscuits is fine - let's save
    the pizza budget for the end-of-term one. Thanks for organising all this!

cluster: student postdoc
  GPU hours for {paper}|Cluster queue|Reserved A100 nodes?
  My runs for {paper} have waited {n} days in the queue for {gpus} GPUs. Can I use the group's reserved nodes for a
    week?|The sweep for {paper} needs about {hours} GPU-hours, more than half of what the group has left this quarter.
    Is that OK, or should I cut it down?
  Go for it - the {conf} experiments are the priority right now. Just post in the lab channel so nobody is surprised by
    the queue.|Can you cut the sweep in half first? Most of the grid won't matter, and I'd like to keep some hours for
    {other}.|Happy to ask Research Computing for a top-up today. How many GPU-hours do you really need, roughly?
  Thanks! Do I need to put the grant code on the jobs, or is that automatic?|It's automatic for the group account - just
    submit with --account=ode-lab. Ping Research Computing if it complains.

supervision: student
  Our meeting on {day}|Supervision this week|Can we talk about chapter {n}?
  Could we move our supervision meeting this week to {day} at {time}? I'm running the {course} lab in the usual
    slot.|I'm a bit stuck on the {paper} experiments. Do you have half an hour on {day}? I could bring the plan for
    chapter {n} too.
  {day} at {time} works - my office or Teams, whichever you prefer. Bring the plots, even the ugly ones.|Happy to talk -
    send me a few lines about where you're stuck first, so we use the time well. Does {time} work?|{day} is packed,
    sorry. Could we do {day2} at {time2} instead? Slides are welcome but don't polish them.
  Thanks! Should I invite {other} as well? We share the codebase.|Good idea - invite {other}, but let's keep the first
    half for your chapter plan. See you then!

travel: student postdoc
  {conf} in {city}|Visa letter for {conf}|Travel funding for {conf}?
  Our paper got into {conf} in {city}! Registration, flights and hotel come to about £{amount}. Can that come out of the
    grant?|For my visa for {conf} in {city}, the embassy wants a letter saying that the lab covers my costs. Could you
    sign one if I draft it?
  Happy to support it - send me the costs and any letter you need, and I'll sign the same day. Is {other} going
    too?|Yes, let's make it work. Apply for everything now rather than wait - presenting remotely is the fallback, not
    the plan.|Of course! Check with Margaret about the visa letter template - she has one the embassies accept.
  Thank you so much! Should I book through the travel agent, or book myself and claim it back?|Book through the agent if
    you can - claiming back takes months. And keep every receipt, just in case.

grant: admin postdoc
  {grant}: due {date}|Outputs for {grant}|Reminder: {grant}
  {grant} is due on {date}. Could you send me the publications and the updated staff costs by {day}, so that I can
    complete the finance section?|@admin Finance needs a justification of the £{amount} travel underspend in {grant}.
    Could you let me have a few sentences by {day}?
  Thanks for the reminder - I'll send it all by {day}. Happy to hop on a call if the finance section needs more.|On it -
    {postdoc} keeps the publication list, so I'll ask for it today. Is a rough version OK first?|Ugh, I'd forgotten
    about that - thanks! You'll have it by {day} at the latest. Is there a template I should follow?
  Thank you. Should the workshop in {city} go under dissemination or under travel?|Under dissemination, I think - it was
    the main talk about the project. Happy to be corrected if the funder says otherwise.

marking: ta
  {course} marking|Exam scripts for {course}|Question {n} of the {course} exam
  I've marked my half of the {course} scripts. The average on question {n} is only about 40%. Should we adjust the
    marking scheme?|Could I swap my {course} marking batch with {other}? I have a deadline that week. We've both agreed,
    we just need your OK.
  Thanks for flagging it - let's discuss at Friday's TA meeting before changing anything. Can you bring a few example
    scripts?|Fine by me - just keep the teaching office in the loop so the records are right. Thanks for sorting it
    out!|Good question, and I'm not sure either. Could you check with the teaching office? Happy to sign whatever they
    need.
  Thanks! And should the moderation sample be ten scripts or ten percent of them?|Ten percent, with at least one from
    each grade band - that's what the external examiner asked for last year.

equipment: student postdoc
  Can we buy {kit}?|Equipment request: {kit}|Quote for {kit}
  Could we order {kit} for the lab? The old one keeps failing, which slows down the {dataset} experiments. The best
    quote is £{amount}.|I'd like to buy {kit} for the user study, about £{amount}. Is there budget left, and who should
    I send the quote to?
  Yes, go ahead - send the quote to Procurement and copy me so I can approve it. The equipment budget has room.|Can it
    wait until {month}? The equipment budget resets then, and we're a bit tight until then.|Happy to buy it for the lab
    - we'll all use it. Could you ask {other} whether the robotics group has a cheaper supplier first?
  Great, thanks! Should I put the grant code on the order, or the lab's general one?|The lab's general code - the grant
    is nearly all spent on people. Procurement knows which one it is.

seminar: collab
  Seminar visit in {month}?|A talk at your seminar?|Visiting on {date}
  I'll be in the UK around {date} and would be glad to give a talk in your seminar, perhaps on our recent work on
    {topic}. Would that be of interest?|I'm speaking in London on {date} and could easily come up the day after to talk
    about {topic} at your seminar, if it is still running.
  That would be lovely - happy to host! Could you send a title and abstract by {day}, so we can announce it?|Yes please!
    Would there be time to meet a few of the students afterwards? They'd love to chat about {topic}.|Great idea - I'm
    away that week, sadly, but {postdoc} runs the series and will sort out the room and lunch. Is an afternoon slot OK?
  Wonderful. Does the seminar room have HDMI, or should I bring an adapter?|HDMI and USB-C both work in the seminar room
    - no adapter needed. Looking forward to it!

committee: admin student
  Annual review panel|Thesis committee meeting|Date for the review panel
  @admin I am arranging the annual review panel for {student}. Are you available on {date} or {date2}? The second
    assessor can do either afternoon.|@student I'm scheduling my thesis committee meeting. The external member can do
    {date} or {date2}. Which would work for you?
  {date} works for me - the afternoon is best. Happy to book the room if that helps.|Either works, but {date2} is safer
    - I might be travelling the week before. Could you send a calendar invite?|I'm away most of that fortnight, sorry.
    Could we find a slot the week after, or do it on Teams?
  Thanks. Should the progress report be circulated beforehand, and if so, how far in advance?|Yes please - a week before
    is ideal, so everyone has time to read it properly. Thanks for organising!

data: collab admin
  Data sharing agreement: {dataset}|DSA for {dataset}|Sharing {dataset}
  @collab Our legal team has approved the data sharing agreement for {dataset}. Could you have the attached version
    signed on your side?|@collab Before we share {dataset}, our ethics board wants to know where the data will be stored
    and who can access it. Could you send a short description?|@admin The contracts office requests two changes to
    clause {n} of the data sharing agreement for {dataset}. Shall I forward them to you?
  Great news, thanks! I'll send it to our contracts office today - they sign, not me, unfortunately. Is next week
    OK?|Happy to - the data stays on the university's secure cluster, and only {student} and I will have access. Does
    that cover it?|Yes please, send it over - I'd like to look before anyone signs anything. Any idea how long the
    changes might take?
  Thank you. They also ask how long you plan to keep the data after the project ends.|Two years after publication, then
    deleted - that's the standard in our ethics approval. Happy to put it in writing.

letter: student postdoc
  Reference letter?|A favour: {fellowship}|Would you be my referee?
  I'm applying for the {fellowship} and need two reference letters by {date}. Would you be willing to write one?|I'm
    applying for postdoc positions this autumn - would you be happy to be one of my referees? The first deadline is
    {date}.
  Of course, happy to! Send me your CV and a few bullet points about what you'd like me to emphasise.|Yes, absolutely -
    you'd be great for it. Can you remind me a week before the deadline? My inbox eats things.|Happy to write one, and
    good luck! Could we chat for ten minutes on {day} about how you're framing it?
  Thank you so much! Should the letter focus on the research, or mention the teaching too?|Both - your teaching is a
    real strength, and panels notice it. I'll keep it to two pages.

code: collab
  Your code for {paper}|Reproducing {paper}|Question about the code for {paper}
  We ran your released code for {paper} but get about {gap} points less on {dataset}. Is there a setting we might be
    missing?|Would you mind if we built on your code for {paper} in our next project? We would of course cite the paper.
  Thanks for reaching out - {student} knows the code best, so I've copied them in. Happy to have a call if that's
    quicker.|Sure, go ahead - that's what it's there for. Do tell us how it goes!|Glad it's useful! Could you open an
    issue on GitHub with the details? That way the answer helps others too.
  Thank you! Is there a preferred citation for the code itself, or just the paper?|Just the paper - there's a BibTeX
    entry in the README, with the code's DOI. Thanks for asking!
"""
Topic = collections.namedtuple("Topic", "roles subjects asks replies follow")
TOPICS = {head.split(": ")[0]: Topic(set(head.split(": ")[1].split()), *(f.strip().split("|") for f in fields))
          for head, *fields in (p.replace("\n    ", " ").split("\n") for p in TOPIC_TEXT.strip().split("\n\n"))}
Mail = collections.namedtuple("Mail", "sender to subject body when tz id")


def first_name(address):
  """The first word of an address's display name, else its local part capitalised."""
  name, addr = email.utils.parseaddr(address)
  return name.split()[0] if name.strip() else addr.split("@")[0].capitalize()


def _stamp(when, tz):
  return datetime.datetime.fromtimestamp(when, datetime.timezone(datetime.timedelta(hours=tz)))


def _cte(text, b64):
  if text.isascii() and all(len(line) <= 78 for line in text.splitlines()):
    return "7bit"
  return "base64" if b64 and not text.isascii() else "quoted-printable"


def _build(mail, html_too=False, b64=False, parents=(), refs_only=False, list_id=None):
  """The EmailMessage of `mail`: 7bit where it can be, else base64 (with `b64`) or quoted-printable."""
  message = email.message.EmailMessage()
  message["From"], message["To"], message["Subject"] = mail.sender, mail.to, mail.subject
  message["Date"], message["Message-ID"] = email.utils.format_datetime(_stamp(mail.when, mail.tz)), mail.id
  if parents and not refs_only:
    message["In-Reply-To"] = parents[-1]
  if parents:
    message["References"] = " ".join(parents)
  if list_id:
    message["List-Id"] = list_id
  message.set_content(mail.body, cte=_cte(mail.body, b64))
  if html_too:
    paragraphs = (html.escape(p).replace("\n", "<br>\n") for p in mail.body.strip("\n").split("\n\n"))
    markup = "<html><body>\n" + "".join(f"<p>{p}</p>\n" for p in paragraphs) + "</body></html>\n"
    message.add_alternative(markup, subtype="html", cte=_cte(markup, b64))
    message.set_boundary("=_" + mail.id.strip("<>").replace("@", "_"))  # Not a random one: the same bytes.
  return message


def _quote(client, prev):
  """The message `prev` as a reply written with `client` quotes it: all of it, its own quotes too."""
  d, name = _stamp(prev.when, prev.tz), email.utils.parseaddr(prev.sender)[0]
  if client == "outlook":  # Unquoted under a header block: reply_text cuts from the separator on.
    sent = f"{DAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year} {d:%H:%M}"
    return (f"\n-----Original Message-----\nFrom: {prev.sender}\nSent: {sent}\nTo: {prev.to}\n"
            f"Subject: {prev.subject}\n\n{prev.body}")
  day, month = DAYS[d.weekday()][:3], MONTHS[d.month - 1][:3]
  intro = {"thunderbird": f"On {d:%d/%m/%Y %H:%M}, {name} wrote:",
           "apple": f"On {d.day} {month} {d.year}, at {d:%H:%M}, {prev.sender} wrote:",
           "gmail": f"On {day}, {d.day} {month} {d.year} at {d:%H:%M}, {name} wrote:"}[client]
  return f"\n{intro}\n" + "".join(f"> {line}\n" if line else ">\n" for line in prev.body.splitlines())


def _slots(rng, sender):
  """The slot values of one thread, drawn in a fixed order."""
  s = {key: rng.choice(values) for key, values in WORDS.items()}
  lab = [p for p in PEOPLE if p.address != sender]  # Who a thread mentions: not its writer.
  s["other"], s["student"], s["postdoc"] = (first_name(rng.choice([p for p in lab if set(p.roles.split()) & r]).address)
                                            for r in ({"student", "postdoc"}, {"student"}, {"postdoc"}))
  s["day"], s["day2"] = rng.sample(WORDS["day"], 2)
  s["time"], s["time2"] = rng.sample(WORDS["time"], 2)
  month, day = rng.randrange(12), rng.randint(2, 20)
  s.update(date=f"{day} {MONTHS[month]}", date2=f"{day + 7} {MONTHS[month]}", month=MONTHS[(month + 1) % 12],
           n=rng.randint(2, 5), gpus=rng.choice((4, 8, 16)), hours=f"{rng.randrange(2, 13) * 500:,}",
           amount=f"{rng.randrange(12, 48) * 100:,}", gap=rng.randint(2, 6), ms=rng.randint(1000, 9999))
  return s


def _words(rng, person, text, greet=True):
  """A correspondent's words: their greeting (or none), the text as their client wraps it, their sign-off."""
  if person.client != "outlook" and greet and rng.random() < 0.3:
    text = f"{rng.choice(OPENERS)} {text}"
  text = text[:1].upper() + text[1:]
  text = textwrap.fill(text, person.width, break_long_words=False, break_on_hyphens=False) if person.width else text
  greeting = rng.choice(person.greetings) if greet else ""
  body = (f"{greeting}\n\n" if greeting else "") + f"{text}\n\n{person.signoff}\n"
  return body.lower() if person.lower else body


def _id(rng, address, key):
  return f"<{rng.getrandbits(40):010x}.{key}@{email.utils.parseaddr(address)[1].split('@')[1]}>"


def _first(rng, topic, person, slots, when, key):
  """The email that starts a thread: `person` asks Kim about `topic`."""
  roles = person.roles.split()
  asks = [a.split(" ", 1)[1] if a.startswith("@") else a for a in TOPICS[topic].asks
          if not a.startswith("@") or a[1:a.index(" ")] in roles]
  subject = rng.choice(TOPICS[topic].subjects).format(**slots)
  body = _words(rng, person, rng.choice(asks).format(**slots))
  return Mail(person.address, OWNER, subject[:1].upper() + subject[1:], body, when, person.tz,
              _id(rng, person.address, key))


def messages(threads=60, seed=0):
  """The mailbox's messages, in order: the `threads` threads correspondents start, list mail between them."""
  rng, out, when, topic = random.Random(seed), [], START, None
  for i in range(threads):
    when += rng.randrange(40, 1000) * 60  # Lab mail comes at any hour, weekends too.
    if i % 6 == 3:
      sender, list_id, subjects, texts = NOTICES[rng.randrange(len(NOTICES))]
      k, slots = rng.randrange(2), _slots(rng, sender)
      mail = Mail(sender, list_id.strip("<>").replace(".", "@", 1), subjects.split("|")[k].format(**slots),
                  texts.split("|")[k].format(**slots) + "\n", when, 0, f"<list{i}.{seed}@lists.example.ac.uk>")
      out.append(_build(mail, True, rng.random() < 0.4, list_id=list_id))
      when += rng.randrange(20, 400) * 60
    topic = rng.choice([name for name in TOPICS if name != topic])
    person = rng.choice([p for p in PEOPLE if TOPICS[topic].roles & set(p.roles.split())])
    slots = _slots(rng, person.address)
    log = [_first(rng, topic, person, slots, when, f"{i}.0.{seed}")]
    out.append(_build(log[0], person.client == "outlook" or rng.random() < 0.15, rng.random() < 0.4))
    # Kim answers from the university's Outlook web mail now and then, always to those who write with Outlook.
    kim_client = "outlook" if person.client == "outlook" or rng.random() < 0.2 else "thunderbird"
    texts = [rng.choice(TOPICS[topic].replies)] + (TOPICS[topic].follow if rng.random() < 0.35 else [])
    for k, text in enumerate(texts):
      when, prev, client = when + rng.randrange(8, 1800) * 60, log[-1], kim_client if k % 2 == 0 else person.client
      subject, key = f"{'RE' if client == 'outlook' else 'Re'}: {log[0].subject}", f"{i}.{k + 1}.{seed}"
      if k % 2 == 0:
        words = f"{OWNER_GREETING.format(first=first_name(person.address))}\n\n{text.format(**slots)}\n\n"
        mail = Mail(OWNER, person.address, subject, words + OWNER_SIGNOFF + "\n" + _quote(client, prev), when, 0,
                    _id(rng, OWNER, key))
      else:
        words = _words(rng, person, text.format(**slots), greet=rng.random() < 0.6)
        mail = Mail(person.address, OWNER, subject, words + _quote(client, prev), when, person.tz,
                    _id(rng, person.address, key))
      log.append(mail)
      html_too = client == "outlook" or (k % 2 == 1 and rng.random() < 0.15)
      out.append(_build(mail, html_too, rng.random() < 0.4, [m.id for m in log[:-1]], rng.random() < 0.15))
  return out


def write(path, threads=60, seed=0):
  """Writes the mailbox to `path` (replacing it); returns the number of messages."""
  return _mbox_writer().write(path, found=messages(threads, seed))


def _mbox_writer():
  """scripts/make_mailbox.py, for its mbox writer only (its mail is its own)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "make_mailbox.py")
  spec = importlib.util.spec_from_file_location("make_mailbox", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def unseen(directory, count=8, seed=0, threads=60):
  """Writes `count` emails to Kim that the mailbox of (`threads`, `seed`) lacks, DIR/unseen_N.eml: every other one
  from a correspondent of that mailbox, the rest from people never in it. Returns their paths."""
  known = messages(threads, seed)
  bodies = {m.get_body(("plain",)).get_content() for m in known}
  senders = {email.utils.parseaddr(m["From"])[1] for m in known}
  regulars = [p for p in PEOPLE if email.utils.parseaddr(p.address)[1] in senders] or list(PEOPLE)
  when = email.utils.parsedate_to_datetime(known[-1]["Date"]).timestamp() if known else START
  rng, used, paths = random.Random(seed + 1000), set(), []  # Other draws than the mailbox's.
  os.makedirs(directory, exist_ok=True)
  for k in range(count):
    person = rng.choice(regulars) if k % 2 == 0 else STRANGERS[k // 2 % len(STRANGERS)]
    fits = [name for name in TOPICS if TOPICS[name].roles & set(person.roles.split())]
    topic = rng.choice([name for name in fits if name not in used] or fits)
    used.add(topic)
    when += rng.randrange(30, 600) * 60
    mail = _first(rng, topic, person, _slots(rng, person.address), when, f"u{k + 1}.{seed}")
    while mail.body in bodies:  # Never an email the model has trained on.
      mail = _first(rng, topic, person, _slots(rng, person.address), when, f"u{k + 1}.{seed}")
    paths.append(os.path.join(directory, f"unseen_{k + 1}.eml"))
    with open(paths[-1], "wb") as f:
      f.write(_build(mail, person.client == "outlook" or rng.random() < 0.15, rng.random() < 0.4).as_bytes())
  return paths


if __name__ == "__main__":
  print(f"Wrote {write(sys.argv[1], *map(int, sys.argv[2:4]))} messages to {sys.argv[1]}.")
