//! A small synthetic NLI set for `nli-bert demo`: offline, seeded, learnable from scratch.
//!
//! Every example is a premise/hypothesis pair built from a few templates over a small lexicon
//! (about 90 words), lowercase, words separated by single spaces, no punctuation, so d2l's
//! `lower().split()` tokenisation and a word vocabulary built from the data cover it exactly.
//! Sentences have 4 to 12 words.
//!
//! ## Reading of the sentences
//!
//! The labels follow SNLI's annotation guideline: premise and hypothesis describe **the same
//! scene**, so "a man" in both is the same man. Concretely:
//!
//! - a simple sentence (`a man is playing a guitar in the park`) speaks of one protagonist; its
//!   noun may be a hypernym (`a person`) of the protagonist's kind. Kinds that are neither above
//!   nor below each other (`man`/`woman`, `guitar`/`piano`) are disjoint, so `a man …` against
//!   `a woman …` is a contradiction, as is `playing a guitar` against `playing a piano` (one
//!   object per activity);
//! - some activities exclude each other (sleeping excludes every other one; sitting excludes
//!   standing, …; see `CLASHES`);
//! - a scene has one location; beneficiaries (`for a friend`) are never exclusive;
//! - `not` negates the activity only: `a man is not sleeping in the park` still says there is a
//!   man, in the park;
//! - `all the children …` presupposes there are children, so it entails `some children …`, and
//!   `no children are sleeping` entails `some children are not sleeping`;
//! - argument swaps of asymmetric verbs (`the dog is chasing the cat` / `the cat is chasing the
//!   dog`) are **neutral**, as SNLI annotators mostly label them: one chase says nothing about the
//!   other. The passive of the same relation (`the cat is being chased by the dog`) is an
//!   entailment, its denial a contradiction.
//!
//! ## Template families
//!
//! | family | entailment | contradiction | neutral |
//! |---|---|---|---|
//! | lexical | hypernyms in the hypothesis (`man`→`person`, `guitar`→`instrument`) | a disjoint sibling (`man`/`woman`, `guitar`/`piano`) | hyponyms in the hypothesis |
//! | negation | a denial with a hypernym or without the location (`a man is not sleeping in the park` ⇒ `a person is not sleeping`) | the activity denied, either way round (`a woman is riding a horse` / `a woman is not riding a horse`) | a denial with a hyponym or an added location |
//! | quantifier | all ⇒ some, no ⇒ some … not | all/no, some/no, all/some … not | some vs all, some vs some … not |
//! | swap | the passive of the same relation | the relation denied, in either voice | the reversed relation (`the cat is chasing the dog`) |
//! | detail | object or beneficiary dropped | — | object or beneficiary added |
//! | action | — | an incompatible activity | — |
//! | location | location dropped | another location | location added |
//!
//! Each example first draws its label (so the labels are balanced), then a family among those that
//! produce that label, uniformly. Hypotheses often leave out the premise's location or
//! beneficiary, which never changes a label.

use std::collections::HashSet;

use crate::data::snli::{Dataset, Example};
use crate::rng::HostRng;

/// The [`HostRng`] stream of the training split.
const TRAIN_STREAM: u32 = 0xDE30_0001;
/// The [`HostRng`] stream of the held-out split.
const TEST_STREAM: u32 = 0xDE30_0002;

const ENTAILMENT: u8 = 0;
const CONTRADICTION: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Lexicon
// ---------------------------------------------------------------------------------------------

/// A noun of the taxonomy: each noun is a kind, `parent` its hypernym.
struct Noun {
    word: &'static str,
    /// "a", "an", or "" for a mass noun.
    article: &'static str,
    plural: &'static str,
    parent: Option<&'static str>,
}

const fn noun(
    word: &'static str,
    article: &'static str,
    plural: &'static str,
    parent: Option<&'static str>,
) -> Noun {
    Noun { word, article, plural, parent }
}

/// The taxonomy: a forest, each noun below its parent; nouns not related by it are disjoint.
static NOUNS: &[Noun] = &[
    noun("person", "a", "people", None),
    noun("man", "a", "men", Some("person")),
    noun("woman", "a", "women", Some("person")),
    noun("child", "a", "children", Some("person")),
    noun("boy", "a", "boys", Some("child")),
    noun("girl", "a", "girls", Some("child")),
    noun("animal", "an", "animals", None),
    noun("dog", "a", "dogs", Some("animal")),
    noun("cat", "a", "cats", Some("animal")),
    noun("horse", "a", "horses", Some("animal")),
    noun("camel", "a", "camels", Some("animal")),
    noun("elephant", "an", "elephants", Some("animal")),
    noun("instrument", "an", "instruments", None),
    noun("guitar", "a", "guitars", Some("instrument")),
    noun("piano", "a", "pianos", Some("instrument")),
    noun("violin", "a", "violins", Some("instrument")),
    noun("drum", "a", "drums", Some("instrument")),
    noun("fruit", "a", "fruits", None),
    noun("apple", "an", "apples", Some("fruit")),
    noun("banana", "a", "bananas", Some("fruit")),
    noun("orange", "an", "oranges", Some("fruit")),
    noun("vehicle", "a", "vehicles", None),
    noun("car", "a", "cars", Some("vehicle")),
    noun("truck", "a", "trucks", Some("vehicle")),
    noun("bus", "a", "buses", Some("vehicle")),
    noun("food", "", "food", None),
    noun("soup", "", "soup", Some("food")),
    noun("pasta", "", "pasta", Some("food")),
    noun("rice", "", "rice", Some("food")),
    noun("book", "a", "books", None),
    noun("newspaper", "a", "newspapers", None),
    noun("magazine", "a", "magazines", None),
];

fn lookup_noun(word: &str) -> Option<&'static Noun> {
    NOUNS.iter().find(|n| n.word == word)
}

fn parent_of(word: &str) -> Option<&'static str> {
    lookup_noun(word).and_then(|n| n.parent)
}

/// Whether kind `x` is `y` or below it in the taxonomy.
fn is_a(x: &str, y: &str) -> bool {
    let mut cur = Some(x);
    while let Some(w) = cur {
        if w == y {
            return true;
        }
        cur = parent_of(w);
    }
    false
}

/// The strict hypernyms of `word`, nearest first.
fn ancestors(word: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut cur = parent_of(word);
    while let Some(w) = cur {
        out.push(w);
        cur = parent_of(w);
    }
    out
}

/// Protagonists of simple sentences: the most specific kinds.
const PEOPLE: &[&str] = &["man", "woman", "boy", "girl"];
const ANIMALS: &[&str] = &["dog", "cat", "horse"];

/// An activity of a simple sentence, in the progressive (`is playing`).
struct Verb {
    word: &'static str,
    /// The (most specific) objects it takes; empty for an intransitive verb.
    objects: &'static [&'static str],
    /// The hypernym of all of `objects`, if the lexicon has one.
    general: Option<&'static str>,
    /// Whether the object may not be left out (`riding`).
    needs_object: bool,
    /// Whether an animal may do it.
    animals: bool,
    /// Whether it takes a beneficiary (`for a friend`).
    beneficiary: bool,
}

const fn verb(
    word: &'static str,
    objects: &'static [&'static str],
    general: Option<&'static str>,
    needs_object: bool,
    animals: bool,
    beneficiary: bool,
) -> Verb {
    Verb { word, objects, general, needs_object, animals, beneficiary }
}

static VERBS: &[Verb] = &[
    verb("sleeping", &[], None, false, true, false),
    verb("running", &[], None, false, true, false),
    verb("swimming", &[], None, false, true, false),
    verb("dancing", &[], None, false, false, true),
    verb("singing", &[], None, false, false, true),
    verb("sitting", &[], None, false, true, false),
    verb("standing", &[], None, false, true, false),
    verb("walking", &[], None, false, true, false),
    verb("playing", &["guitar", "piano", "violin", "drum"], Some("instrument"), false, false, true),
    verb("eating", &["apple", "banana", "orange"], Some("fruit"), false, true, false),
    verb("driving", &["car", "truck", "bus"], Some("vehicle"), false, false, false),
    verb("cooking", &["soup", "pasta", "rice"], Some("food"), false, false, true),
    verb("riding", &["horse", "camel", "elephant"], Some("animal"), true, false, false),
    verb("reading", &["book", "newspaper", "magazine"], None, false, false, true),
];

/// Pairs of activities one protagonist cannot do at once (besides `sleeping`, which excludes all).
const CLASHES: &[(&str, &str)] = &[
    ("sitting", "standing"),
    ("sitting", "running"),
    ("sitting", "walking"),
    ("sitting", "dancing"),
    ("sitting", "swimming"),
    ("standing", "swimming"),
    ("standing", "driving"),
    ("standing", "riding"),
    ("running", "walking"),
    ("running", "swimming"),
    ("running", "driving"),
    ("running", "riding"),
    ("running", "cooking"),
    ("running", "reading"),
    ("swimming", "walking"),
    ("swimming", "driving"),
    ("swimming", "riding"),
    ("swimming", "reading"),
    ("swimming", "cooking"),
    ("swimming", "dancing"),
    ("driving", "riding"),
    ("driving", "cooking"),
    ("driving", "dancing"),
    ("driving", "walking"),
    ("riding", "walking"),
];

/// Whether one protagonist cannot do activities `a` and `b` at once.
fn clash(a: &str, b: &str) -> bool {
    a != b
        && (a == "sleeping"
            || b == "sleeping"
            || CLASHES.iter().any(|&(x, y)| (x == a && y == b) || (x == b && y == a)))
}

/// Locations of a scene (mutually exclusive).
const LOCATIONS: &[&str] =
    &["in the park", "in the kitchen", "at the beach", "in the library", "on the street", "in the garden"];
/// Beneficiaries of an activity (not exclusive: never contradicted, only added or dropped).
const BENEFICIARIES: &[&str] = &["for a friend", "for the family", "for the guests"];

/// Plural subjects of quantified sentences.
const QUANTIFIED: &[&str] = &["person", "man", "woman", "child", "boy", "girl", "dog", "cat", "horse"];

/// Participants of the argument-swap sentences.
const SWAP_ENTITIES: &[&str] = &["man", "woman", "boy", "girl", "dog", "cat"];
/// Asymmetric relations: progressive, past participle, and whether an animal may be the agent.
const SWAP_VERBS: &[(&str, &str, bool)] = &[
    ("chasing", "chased", true),
    ("following", "followed", true),
    ("watching", "watched", true),
    ("pushing", "pushed", true),
    ("helping", "helped", false),
    ("calling", "called", false),
];

// ---------------------------------------------------------------------------------------------
// Sentences
// ---------------------------------------------------------------------------------------------

fn pick<T: Copy>(rng: &mut HostRng, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

fn chance(rng: &mut HostRng, p: f64) -> bool {
    rng.uniform() < p
}

/// A noun phrase: `a man`, `an apple`, `soup`.
fn push_np(words: &mut Vec<&'static str>, word: &'static str) {
    let n = lookup_noun(word).expect("noun in the lexicon");
    if !n.article.is_empty() {
        words.push(n.article);
    }
    words.push(n.word);
}

/// `a SUBJ is [not] VERB [OBJ] [LOCATION] [BENEFICIARY]`.
#[derive(Clone)]
struct Simple {
    subj: &'static str,
    neg: bool,
    verb: &'static Verb,
    obj: Option<&'static str>,
    loc: Option<&'static str>,
    ben: Option<&'static str>,
}

impl Simple {
    fn render(&self) -> String {
        let mut w = Vec::with_capacity(16);
        push_np(&mut w, self.subj);
        w.push("is");
        if self.neg {
            w.push("not");
        }
        w.push(self.verb.word);
        if let Some(o) = self.obj {
            push_np(&mut w, o);
        }
        for phrase in [self.loc, self.ben].into_iter().flatten() {
            w.push(phrase);
        }
        w.join(" ")
    }

    /// The same activity, denied, in the same place (a beneficiary would be ambiguous under
    /// `not`, so it goes).
    fn negated(&self) -> Simple {
        Simple { neg: true, ben: None, ..self.clone() }
    }

    fn is_animal(&self) -> bool {
        is_a(self.subj, "animal")
    }

    fn drop_details(&mut self, rng: &mut HostRng, p_drop: f64) {
        for slot in [&mut self.loc, &mut self.ben] {
            if chance(rng, p_drop) {
                *slot = None;
            }
        }
    }
}

fn random_verb(rng: &mut HostRng, animal: bool) -> &'static Verb {
    let verbs: Vec<&'static Verb> = VERBS.iter().filter(|v| v.animals || !animal).collect();
    pick(rng, &verbs)
}

/// A verb that clashes with `v` and suits the protagonist.
fn clashing_verb(rng: &mut HostRng, v: &Verb, animal: bool) -> &'static Verb {
    let verbs: Vec<&'static Verb> =
        VERBS.iter().filter(|u| (u.animals || !animal) && clash(v.word, u.word)).collect();
    pick(rng, &verbs)
}

/// A random object for `v`: a specific one, its hypernym, or none, as `v` allows.
fn random_object(rng: &mut HostRng, v: &Verb) -> Option<&'static str> {
    if v.objects.is_empty() {
        return None;
    }
    let r = rng.uniform();
    if r < 0.6 || (v.general.is_none() && v.needs_object) {
        Some(pick(rng, v.objects))
    } else if (r < 0.8 || v.needs_object) && v.general.is_some() {
        v.general
    } else {
        None
    }
}

/// An object of `v` that is `o`'s sibling (another specific object).
fn sibling_object(rng: &mut HostRng, v: &Verb, o: &str) -> &'static str {
    let others: Vec<&'static str> = v.objects.iter().copied().filter(|&x| x != o).collect();
    pick(rng, &others)
}

/// A protagonist of the same kind (person or animal) disjoint from `s`.
fn sibling_subject(rng: &mut HostRng, s: &str) -> &'static str {
    let pool = if is_a(s, "animal") { ANIMALS } else { PEOPLE };
    let others: Vec<&'static str> = pool.iter().copied().filter(|&x| x != s).collect();
    pick(rng, &others)
}

/// A positive sentence with a specific protagonist and, if any, a specific object.
fn random_core(rng: &mut HostRng) -> Simple {
    let animal = chance(rng, 0.25);
    let subj = if animal { pick(rng, ANIMALS) } else { pick(rng, PEOPLE) };
    let verb = random_verb(rng, animal);
    let obj = if !verb.objects.is_empty() && (verb.needs_object || chance(rng, 0.7)) {
        Some(pick(rng, verb.objects))
    } else {
        None
    };
    Simple { subj, neg: false, verb, obj, loc: None, ben: None }
}

fn add_details(rng: &mut HostRng, s: &mut Simple, p_loc: f64, p_ben: f64) {
    if chance(rng, p_loc) {
        s.loc = Some(pick(rng, LOCATIONS));
    }
    if s.verb.beneficiary && chance(rng, p_ben) {
        s.ben = Some(pick(rng, BENEFICIARIES));
    }
}

/// Quantifier forms: `all the Xs are V`, `some Xs are V`, `no Xs are V`, `some Xs are not V`.
#[derive(Clone, Copy)]
enum Quant {
    All,
    SomeAre,
    NoneAre,
    SomeAreNot,
}

fn render_quantified(q: Quant, noun_word: &str, verb_word: &str, loc: Option<&str>) -> String {
    let plural = lookup_noun(noun_word).expect("noun in the lexicon").plural;
    let mut s = match q {
        Quant::All => format!("all the {plural} are {verb_word}"),
        Quant::SomeAre => format!("some {plural} are {verb_word}"),
        Quant::NoneAre => format!("no {plural} are {verb_word}"),
        Quant::SomeAreNot => format!("some {plural} are not {verb_word}"),
    };
    if let Some(l) = loc {
        s.push(' ');
        s.push_str(l);
    }
    s
}

/// `the AGENT is [not] VERBING the PATIENT`, or the passive `the PATIENT is [not] being VERBED by
/// the AGENT`, then the location if any.
fn render_relation(
    verb: (&str, &str, bool),
    agent: &str,
    patient: &str,
    passive: bool,
    neg: bool,
    loc: Option<&str>,
) -> String {
    let not = if neg { " not" } else { "" };
    let mut s = if passive {
        format!("the {patient} is{not} being {} by the {agent}", verb.1)
    } else {
        format!("the {agent} is{not} {} the {patient}", verb.0)
    };
    if let Some(l) = loc {
        s.push(' ');
        s.push_str(l);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Families
// ---------------------------------------------------------------------------------------------

/// The template families (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    Lexical,
    Negation,
    Quantifier,
    Swap,
    Detail,
    Action,
    Location,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::Lexical,
        Family::Negation,
        Family::Quantifier,
        Family::Swap,
        Family::Detail,
        Family::Action,
        Family::Location,
    ];

    fn produces(self, label: u8) -> bool {
        match self {
            Family::Action => label == CONTRADICTION,
            Family::Detail => label != CONTRADICTION,
            _ => true,
        }
    }

    fn generate(self, rng: &mut HostRng, label: u8) -> (String, String) {
        match self {
            Family::Lexical => gen_lexical(rng, label),
            Family::Negation => gen_negation(rng, label),
            Family::Quantifier => gen_quantifier(rng, label),
            Family::Swap => gen_swap(rng, label),
            Family::Detail => gen_detail(rng, label),
            Family::Action => gen_action(rng),
            Family::Location => gen_location(rng, label),
        }
    }
}

fn pair(p: &Simple, h: &Simple) -> (String, String) {
    (p.render(), h.render())
}

/// Hypernyms (entailment), disjoint siblings (contradiction), hyponyms (neutral).
fn gen_lexical(rng: &mut HostRng, label: u8) -> (String, String) {
    let mut base = random_core(rng);
    add_details(rng, &mut base, 0.2, 0.15);
    let obj_general = base.obj.and(base.verb.general);
    match label {
        CONTRADICTION => {
            let mut h = base.clone();
            match base.obj {
                Some(o) if chance(rng, 0.5) => h.obj = Some(sibling_object(rng, base.verb, o)),
                _ => h.subj = sibling_subject(rng, base.subj),
            }
            pair(&base, &h)
        }
        _ => {
            // `general` is `base` with the subject and/or the object replaced by a hypernym.
            let mut general = base.clone();
            let mut up_subj = chance(rng, 0.6);
            let mut up_obj = obj_general.is_some() && chance(rng, 0.6);
            if !up_subj && !up_obj {
                if obj_general.is_some() && chance(rng, 0.5) {
                    up_obj = true;
                } else {
                    up_subj = true;
                }
            }
            if up_subj {
                general.subj = pick(rng, &ancestors(base.subj));
            }
            if up_obj {
                general.obj = obj_general;
            }
            if label == ENTAILMENT {
                general.drop_details(rng, 0.3);
                pair(&base, &general)
            } else {
                let mut specific = base;
                specific.drop_details(rng, 0.3);
                pair(&general, &specific)
            }
        }
    }
}

/// An activity against its denial (contradiction, either way round), and two denials of one
/// activity that differ as in the lexical and location families: `a man is not sleeping in the
/// park` ⇒ `a person is not sleeping`, and the reverse is neutral.
///
/// (`a man is sleeping` ⇒ `a man is not running` would also be sound here, but it is the one
/// pattern where different activities do not contradict, and a small model learns it slowly.)
fn gen_negation(rng: &mut HostRng, label: u8) -> (String, String) {
    if label == CONTRADICTION {
        let mut pos = random_core(rng);
        if chance(rng, 0.2) {
            pos.subj = pick(rng, &ancestors(pos.subj));
        }
        add_details(rng, &mut pos, 0.3, 0.0);
        return if chance(rng, 0.5) { pair(&pos, &pos.negated()) } else { pair(&pos.negated(), &pos) };
    }
    // `strong` says more than `weak`: a more specific subject, or a location.
    let mut strong = random_core(rng).negated();
    let mut weak = strong.clone();
    if chance(rng, 0.5) {
        weak.subj = pick(rng, &ancestors(strong.subj));
        if chance(rng, 0.3) {
            strong.loc = Some(pick(rng, LOCATIONS));
            weak.loc = if chance(rng, 0.2) { None } else { strong.loc };
        }
    } else {
        strong.loc = Some(pick(rng, LOCATIONS));
    }
    if label == ENTAILMENT {
        pair(&strong, &weak)
    } else {
        pair(&weak, &strong)
    }
}

/// all / some / no / some … not, over the same noun, activity and location.
fn gen_quantifier(rng: &mut HostRng, label: u8) -> (String, String) {
    use Quant::{All, NoneAre, SomeAre, SomeAreNot};
    let noun_word = pick(rng, QUANTIFIED);
    let animal = is_a(noun_word, "animal");
    let verbs: Vec<&'static Verb> =
        VERBS.iter().filter(|v| v.objects.is_empty() && (v.animals || !animal)).collect();
    let v = pick(rng, &verbs);
    let loc = if chance(rng, 0.5) { Some(pick(rng, LOCATIONS)) } else { None };
    let pairs: &[(Quant, Quant)] = match label {
        ENTAILMENT => &[(All, SomeAre), (NoneAre, SomeAreNot)],
        CONTRADICTION => &[
            (All, NoneAre),
            (All, SomeAreNot),
            (SomeAre, NoneAre),
            (NoneAre, All),
            (NoneAre, SomeAre),
            (SomeAreNot, All),
        ],
        _ => &[(SomeAre, All), (SomeAre, SomeAreNot), (SomeAreNot, SomeAre), (SomeAreNot, NoneAre)],
    };
    let (qp, qh) = pick(rng, pairs);
    (render_quantified(qp, noun_word, v.word, loc), render_quantified(qh, noun_word, v.word, loc))
}

/// An asymmetric relation in the active voice against its passive (entailment), its denial in
/// either voice (contradiction), or the reversed relation (neutral).
fn gen_swap(rng: &mut HostRng, label: u8) -> (String, String) {
    let a = pick(rng, SWAP_ENTITIES);
    let others: Vec<&str> = SWAP_ENTITIES.iter().copied().filter(|&x| x != a).collect();
    let b = pick(rng, &others);
    let any_animal = is_a(a, "animal") || is_a(b, "animal");
    let verbs: Vec<(&str, &str, bool)> = SWAP_VERBS.iter().copied().filter(|v| v.2 || !any_animal).collect();
    let v = pick(rng, &verbs);
    let loc = if chance(rng, 0.4) { Some(pick(rng, LOCATIONS)) } else { None };
    let premise = render_relation(v, a, b, false, false, loc);
    let h_loc = if chance(rng, 0.5) { loc } else { None };
    let hypothesis = match label {
        ENTAILMENT => render_relation(v, a, b, true, false, h_loc),
        CONTRADICTION => render_relation(v, a, b, chance(rng, 0.5), true, h_loc),
        _ => render_relation(v, b, a, false, false, h_loc),
    };
    (premise, hypothesis)
}

/// Objects and beneficiaries: dropped (entailment) or added (neutral).
fn gen_detail(rng: &mut HostRng, label: u8) -> (String, String) {
    // Verbs that take an optional object or a beneficiary.
    let mut p = loop {
        let p = random_core(rng);
        if p.verb.beneficiary || (!p.verb.objects.is_empty() && !p.verb.needs_object) {
            break p;
        }
    };
    add_details(rng, &mut p, 0.25, 0.5);
    let can_drop_obj = !p.verb.needs_object && !p.verb.objects.is_empty();
    if label == ENTAILMENT {
        if p.ben.is_none() && p.obj.is_none() {
            if can_drop_obj {
                p.obj = Some(pick(rng, p.verb.objects));
            } else {
                p.ben = Some(pick(rng, BENEFICIARIES));
            }
        }
        let mut h = p.clone();
        let drop_obj = p.obj.is_some() && can_drop_obj && (p.ben.is_none() || chance(rng, 0.5));
        if drop_obj {
            h.obj = None;
        }
        if p.ben.is_some() && (!drop_obj || chance(rng, 0.3)) {
            h.ben = None;
        }
        pair(&p, &h)
    } else {
        let h = if can_drop_obj && (!p.verb.beneficiary || chance(rng, 0.5)) {
            p.obj = None;
            Simple { obj: Some(pick(rng, p.verb.objects)), ..p.clone() }
        } else {
            p.ben = None;
            Simple { ben: Some(pick(rng, BENEFICIARIES)), ..p.clone() }
        };
        pair(&p, &h)
    }
}

/// Incompatible activities (contradiction only).
fn gen_action(rng: &mut HostRng) -> (String, String) {
    let mut p = random_core(rng);
    add_details(rng, &mut p, 0.25, 0.2);
    let u = clashing_verb(rng, p.verb, p.is_animal());
    let mut h = Simple { verb: u, obj: random_object(rng, u), ..p.clone() };
    if !u.beneficiary {
        h.ben = None;
    }
    pair(&p, &h)
}

/// Locations: dropped (entailment), changed (contradiction), added (neutral).
fn gen_location(rng: &mut HostRng, label: u8) -> (String, String) {
    let mut p = random_core(rng);
    add_details(rng, &mut p, 0.0, 0.2);
    let l = pick(rng, LOCATIONS);
    let mut h = p.clone();
    if label != CONTRADICTION {
        h.drop_details(rng, 0.3);
    }
    match label {
        ENTAILMENT => {
            p.loc = Some(l);
            h.loc = None;
        }
        CONTRADICTION => {
            p.loc = Some(l);
            let others: Vec<&str> = LOCATIONS.iter().copied().filter(|&x| x != l).collect();
            h.loc = Some(pick(rng, &others));
        }
        _ => h.loc = Some(l),
    }
    pair(&p, &h)
}

// ---------------------------------------------------------------------------------------------
// Datasets
// ---------------------------------------------------------------------------------------------

/// `n` examples from stream `stream` of `seed`, none of whose (premise, hypothesis) pairs is in
/// `exclude`, with balanced labels (`n / 3` each, the first `n % 3` labels one more), shuffled.
///
/// Gives up (returning fewer examples) only if `exclude` covers nearly all pairs the templates
/// make, which needs far more examples than a demo uses.
fn generate_tagged(
    seed: u64,
    stream: u32,
    n: usize,
    exclude: &HashSet<(String, String)>,
) -> Vec<(Family, Example)> {
    let mut rng = HostRng::new(seed, stream);
    let mut out = Vec::with_capacity(n);
    let max_tries = 100 * n + 1000;
    for _ in 0..max_tries {
        if out.len() == n {
            break;
        }
        // With nothing excluded, example k gets label k % 3; rejections just retry that label.
        let label = (out.len() % 3) as u8;
        let families: Vec<Family> = Family::ALL.iter().copied().filter(|f| f.produces(label)).collect();
        let family = pick(&mut rng, &families);
        let (premise, hypothesis) = family.generate(&mut rng, label);
        if exclude.contains(&(premise.clone(), hypothesis.clone())) {
            continue;
        }
        out.push((family, Example { premise, hypothesis, label }));
    }
    rng.shuffle(&mut out);
    out
}

/// `n` synthetic NLI examples for `seed` (the training stream of [`demo_datasets`]).
///
/// Deterministic in `seed`; labels balanced (`n / 3` of each, ±1); shuffled. Sentences are
/// lowercase ASCII words separated by single spaces, 4 to 12 words long.
pub fn generate(seed: u64, n: usize) -> Vec<Example> {
    generate_tagged(seed, TRAIN_STREAM, n, &HashSet::new()).into_iter().map(|(_, e)| e).collect()
}

/// The demo's training set (`n_train` examples, source `demo:train`, equal to
/// [`generate`]`(seed, n_train)`) and held-out test set (`n_test` examples, source `demo:test`).
///
/// Both come from the same templates through different random streams; the test set has no
/// (premise, hypothesis) pair that is in the training set, and its labels are balanced as well.
pub fn demo_datasets(seed: u64, n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    let train = generate(seed, n_train);
    let seen: HashSet<(String, String)> =
        train.iter().map(|e| (e.premise.clone(), e.hypothesis.clone())).collect();
    let test: Vec<Example> =
        generate_tagged(seed, TEST_STREAM, n_test, &seen).into_iter().map(|(_, e)| e).collect();
    (
        Dataset { examples: train, skipped: 0, source: "demo:train".to_string() },
        Dataset { examples: test, skipped: 0, source: "demo:test".to_string() },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // -----------------------------------------------------------------------------------------
    // An independent symbolic checker: parse each sentence back into a logical form, enumerate
    // the scenes (models) both could describe, and derive the label by model checking: every
    // scene where the premise holds makes the hypothesis true → entailment; none does →
    // contradiction; else neutral. It shares only the lexicon (word lists, taxonomy, clashes)
    // with the generator, not its label logic.
    // -----------------------------------------------------------------------------------------

    const NEUTRAL: u8 = 2;

    fn lookup_verb(word: &str) -> Option<&'static Verb> {
        VERBS.iter().find(|v| v.word == word)
    }

    /// A kind, object or place the lexicon does not name.
    const OTHER: &str = "<other>";

    #[derive(Clone, Debug)]
    struct SimpleLf {
        subj: String,
        neg: bool,
        verb: String,
        obj: Option<String>,
        loc: Option<String>,
        ben: Option<String>,
    }

    #[derive(Clone, Debug)]
    enum Lf {
        Simple(SimpleLf),
        /// `q` is "all", "some" or "no".
        Quant {
            q: String,
            neg: bool,
            noun: String,
            verb: String,
            loc: Option<String>,
        },
        Rel {
            neg: bool,
            verb: String,
            agent: String,
            patient: String,
            loc: Option<String>,
        },
    }

    /// Takes the phrase from `phrases` that `toks[*i..]` starts with, if any.
    fn take_phrase(toks: &[&str], i: &mut usize, phrases: &[&str]) -> Option<String> {
        for ph in phrases {
            let w: Vec<&str> = ph.split(' ').collect();
            if toks.len() >= *i + w.len() && toks[*i..*i + w.len()] == w[..] {
                *i += w.len();
                return Some(ph.to_string());
            }
        }
        None
    }

    fn parse(s: &str) -> Lf {
        let t: Vec<&str> = s.split(' ').collect();
        match t[0] {
            "a" | "an" => {
                let n = lookup_noun(t[1]).unwrap_or_else(|| panic!("unknown subject in {s:?}"));
                assert_eq!(n.article, t[0], "article in {s:?}");
                assert_eq!(t[2], "is", "{s:?}");
                let mut i = 3;
                let neg = t[i] == "not";
                if neg {
                    i += 1;
                }
                let v = lookup_verb(t[i]).unwrap_or_else(|| panic!("unknown verb in {s:?}"));
                i += 1;
                let mut obj = None;
                if i < t.len() {
                    let (o, len) = match t[i] {
                        "a" | "an" => (lookup_noun(t[i + 1]), 2),
                        w => (lookup_noun(w).filter(|n| n.article.is_empty()), 1),
                    };
                    if let Some(o) = o {
                        assert!(len == 1 || o.article == t[i], "article in {s:?}");
                        assert!(
                            v.objects.contains(&o.word) || v.general == Some(o.word),
                            "{} cannot take {} in {s:?}",
                            v.word,
                            o.word
                        );
                        obj = Some(o.word.to_string());
                        i += len;
                    }
                }
                assert!(!v.needs_object || obj.is_some(), "{s:?} lacks its object");
                let loc = take_phrase(&t, &mut i, LOCATIONS);
                let ben = take_phrase(&t, &mut i, BENEFICIARIES);
                assert_eq!(i, t.len(), "trailing words in {s:?}");
                Lf::Simple(SimpleLf { subj: t[1].to_string(), neg, verb: v.word.to_string(), obj, loc, ben })
            }
            "all" | "some" | "no" => {
                let mut i = 1;
                if t[0] == "all" {
                    assert_eq!(t[1], "the", "{s:?}");
                    i = 2;
                }
                let n = NOUNS.iter().find(|n| n.plural == t[i]).unwrap_or_else(|| panic!("plural in {s:?}"));
                assert_eq!(t[i + 1], "are", "{s:?}");
                i += 2;
                let neg = t[i] == "not";
                if neg {
                    i += 1;
                }
                let v = lookup_verb(t[i]).unwrap_or_else(|| panic!("unknown verb in {s:?}"));
                i += 1;
                let loc = take_phrase(&t, &mut i, LOCATIONS);
                assert_eq!(i, t.len(), "trailing words in {s:?}");
                Lf::Quant {
                    q: t[0].to_string(),
                    neg,
                    noun: n.word.to_string(),
                    verb: v.word.to_string(),
                    loc,
                }
            }
            "the" => {
                let first = t[1].to_string();
                assert_eq!(t[2], "is", "{s:?}");
                let mut i = 3;
                let neg = t[i] == "not";
                if neg {
                    i += 1;
                }
                let (verb, agent, patient);
                if t[i] == "being" {
                    let v = SWAP_VERBS.iter().find(|v| v.1 == t[i + 1]).expect("participle");
                    assert_eq!(&t[i + 2..i + 4], &["by", "the"], "{s:?}");
                    verb = v.0.to_string();
                    agent = t[i + 4].to_string();
                    patient = first;
                    i += 5;
                } else {
                    let v = SWAP_VERBS.iter().find(|v| v.0 == t[i]).expect("relation verb");
                    assert_eq!(t[i + 1], "the", "{s:?}");
                    verb = v.0.to_string();
                    agent = first;
                    patient = t[i + 2].to_string();
                    i += 3;
                }
                let loc = take_phrase(&t, &mut i, LOCATIONS);
                assert_eq!(i, t.len(), "trailing words in {s:?}");
                assert_ne!(agent, patient, "{s:?}");
                Lf::Rel { neg, verb, agent, patient, loc }
            }
            _ => panic!("unparsable {s:?}"),
        }
    }

    /// The label from (premise holds, hypothesis holds) over all scenes.
    fn decide(worlds: impl Iterator<Item = (bool, bool)>) -> u8 {
        let (mut some_p, mut always_h, mut never_h) = (false, true, true);
        for (p, h) in worlds {
            if p {
                some_p = true;
                always_h &= h;
                never_h &= !h;
            }
        }
        assert!(some_p, "premise holds in no scene");
        if always_h {
            ENTAILMENT
        } else if never_h {
            CONTRADICTION
        } else {
            NEUTRAL
        }
    }

    /// The most specific kinds at or below `w`.
    fn leaves(w: &str) -> Vec<String> {
        NOUNS
            .iter()
            .filter(|n| is_a(n.word, w) && !NOUNS.iter().any(|m| m.parent == Some(n.word)))
            .map(|n| n.word.to_string())
            .collect()
    }

    fn dedup(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v.dedup();
        v
    }

    /// One protagonist; per mentioned activity, absent or done with one object; one location; a set of
    /// beneficiaries.
    struct Scene<'a> {
        agent: &'a str,
        acts: Vec<(&'a str, Option<&'a str>)>,
        loc: &'a str,
        bens: Vec<&'a str>,
    }

    fn holds(s: &SimpleLf, w: &Scene) -> bool {
        let agent = w.agent != OTHER && is_a(w.agent, &s.subj);
        let act = w.acts.iter().any(|&(v, o)| {
            v == s.verb
                && match (o, &s.obj) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(o), Some(want)) => o != OTHER && is_a(o, want),
                }
        });
        let scene = s.loc.as_deref().is_none_or(|l| l == w.loc)
            && s.ben.as_deref().is_none_or(|b| w.bens.contains(&b));
        agent && scene && (act != s.neg)
    }

    fn simple_label(p: &SimpleLf, h: &SimpleLf) -> u8 {
        let mut agents = leaves(&p.subj);
        agents.extend(leaves(&h.subj));
        agents.push(OTHER.to_string());
        let agents = dedup(agents);
        let verbs = dedup(vec![p.verb.clone(), h.verb.clone()]);
        // Per verb: None (not doing it) or Some(object).
        let options: Vec<Vec<Option<String>>> = verbs
            .iter()
            .map(|v| {
                let mut objs = vec![OTHER.to_string()];
                for s in [p, h] {
                    if &s.verb == v {
                        if let Some(o) = &s.obj {
                            objs.extend(leaves(o));
                        }
                    }
                }
                let mut opts = vec![None];
                opts.extend(dedup(objs).into_iter().map(Some));
                opts
            })
            .collect();
        let mentioned = |f: fn(&SimpleLf) -> &Option<String>| {
            let mut v: Vec<String> = [p, h].iter().filter_map(|s| f(s).clone()).collect();
            v.push(OTHER.to_string());
            dedup(v)
        };
        let locs = mentioned(|s| &s.loc);
        let bens: Vec<String> =
            dedup([p, h].iter().filter_map(|s| s.ben.clone()).collect()).into_iter().collect();
        let mut results = Vec::new();
        let n_combos: usize = options.iter().map(|o| o.len()).product();
        for agent in &agents {
            for combo in 0..n_combos {
                let mut k = combo;
                let mut acts = Vec::new();
                for (v, opts) in verbs.iter().zip(&options) {
                    let o = &opts[k % opts.len()];
                    k /= opts.len();
                    if let Some(o) = o {
                        acts.push((v.as_str(), Some(o.as_str())));
                    }
                }
                if acts.len() == 2 && clash(acts[0].0, acts[1].0) {
                    continue;
                }
                for loc in &locs {
                    for mask in 0..(1usize << bens.len()) {
                        let bs: Vec<&str> = (0..bens.len())
                            .filter(|b| mask >> b & 1 == 1)
                            .map(|b| bens[b].as_str())
                            .collect();
                        let w = Scene { agent, acts: acts.clone(), loc, bens: bs };
                        results.push((holds(p, &w), holds(h, &w)));
                    }
                }
            }
        }
        decide(results.into_iter())
    }

    fn oracle(premise: &str, hypothesis: &str) -> u8 {
        match (parse(premise), parse(hypothesis)) {
            (Lf::Simple(p), Lf::Simple(h)) => simple_label(&p, &h),
            (
                Lf::Quant { q: qp, neg: np, noun: a, verb: va, loc: la },
                Lf::Quant { q: qh, neg: nh, noun: b, verb: vb, loc: lb },
            ) => {
                assert!(a == b && va == vb && la == lb, "quantified pair on different predicates");
                // A non-empty group of 1-3 members, each doing the activity or not.
                let eval = |q: &str, neg: bool, bits: &[bool]| match q {
                    "all" => bits.iter().all(|&b| b != neg),
                    "some" => bits.iter().any(|&b| b != neg),
                    _ => !bits.iter().any(|&b| b != neg),
                };
                let mut results = Vec::new();
                for k in 1..=3usize {
                    for mask in 0..(1usize << k) {
                        let bits: Vec<bool> = (0..k).map(|i| mask >> i & 1 == 1).collect();
                        results.push((eval(&qp, np, &bits), eval(&qh, nh, &bits)));
                    }
                }
                decide(results.into_iter())
            }
            (
                Lf::Rel { neg: np, verb: vp, agent: ap, patient: pp, loc: lp },
                Lf::Rel { neg: nh, verb: vh, agent: ah, patient: ph, loc: lh },
            ) => {
                // Each mentioned relation holds or not; the scene is at one location.
                let (rp, rh) = (format!("{vp} {ap} {pp}"), format!("{vh} {ah} {ph}"));
                let atoms = dedup(vec![rp.clone(), rh.clone()]);
                let ip = atoms.iter().position(|x| *x == rp).unwrap();
                let ih = atoms.iter().position(|x| *x == rh).unwrap();
                let mut locs: Vec<String> = [&lp, &lh].into_iter().flatten().cloned().collect();
                locs.push(OTHER.to_string());
                let at = |want: &Option<String>, l: &String| want.as_ref().is_none_or(|w| w == l);
                let mut results = Vec::new();
                for l in &dedup(locs) {
                    for m in 0..1usize << atoms.len() {
                        results.push((
                            at(&lp, l) && ((m >> ip & 1 == 1) != np),
                            at(&lh, l) && ((m >> ih & 1 == 1) != nh),
                        ));
                    }
                }
                decide(results.into_iter())
            }
            (p, h) => panic!("premise and hypothesis of different forms: {p:?} / {h:?}"),
        }
    }

    // -----------------------------------------------------------------------------------------

    fn label_counts(xs: &[Example]) -> [usize; 3] {
        let mut c = [0; 3];
        for e in xs {
            c[e.label as usize] += 1;
        }
        c
    }

    #[test]
    fn deterministic_in_seed() {
        assert_eq!(generate(7, 500), generate(7, 500));
        assert_ne!(generate(7, 500), generate(8, 500));
        let (a, b) = demo_datasets(7, 300, 100);
        assert_eq!((a.clone(), b.clone()), demo_datasets(7, 300, 100));
        assert_eq!(a.examples, generate(7, 300));
        assert_ne!(b.examples, demo_datasets(8, 300, 100).1.examples);
    }

    #[test]
    fn labels_are_balanced() {
        for n in [0, 1, 2, 3, 4, 5, 100, 601, 3000] {
            let c = label_counts(&generate(3, n));
            assert_eq!(c.iter().sum::<usize>(), n);
            for k in c {
                assert!(k == n / 3 || k == n / 3 + 1, "n={n}: {c:?}");
            }
        }
        let (train, test) = demo_datasets(3, 2000, 601);
        for d in [&train, &test] {
            let c = label_counts(&d.examples);
            let n = d.examples.len();
            for k in c {
                assert!(k == n / 3 || k == n / 3 + 1, "{}: {c:?}", d.source);
            }
        }
    }

    #[test]
    fn labels_are_shuffled() {
        let labels: Vec<u8> = generate(5, 300).iter().map(|e| e.label).collect();
        let cyclic: Vec<u8> = (0..300).map(|i| (i % 3) as u8).collect();
        assert_ne!(labels, cyclic);
    }

    #[test]
    fn sentences_are_plain_lowercase_words() {
        let (train, test) = demo_datasets(11, 5000, 1000);
        let mut vocab = HashSet::new();
        for e in train.examples.iter().chain(&test.examples) {
            assert_ne!(e.premise, e.hypothesis);
            assert!((e.label as usize) < crate::data::snli::LABELS.len());
            for s in [&e.premise, &e.hypothesis] {
                assert!(!s.is_empty());
                assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b' '), "{s:?}");
                assert!(!s.starts_with(' ') && !s.ends_with(' ') && !s.contains("  "), "{s:?}");
                let n = s.split(' ').count();
                assert!((4..=12).contains(&n), "{n} words: {s:?}");
                vocab.extend(s.split(' '));
            }
        }
        assert!(vocab.len() <= 120, "{} distinct words", vocab.len());
    }

    #[test]
    fn test_split_is_held_out() {
        let (train, test) = demo_datasets(2, 6000, 2000);
        assert_eq!((train.source.as_str(), test.source.as_str()), ("demo:train", "demo:test"));
        assert_eq!((train.examples.len(), test.examples.len()), (6000, 2000));
        assert_eq!((train.skipped, test.skipped), (0, 0));
        let seen: HashSet<(&str, &str)> =
            train.examples.iter().map(|e| (e.premise.as_str(), e.hypothesis.as_str())).collect();
        for e in &test.examples {
            assert!(!seen.contains(&(e.premise.as_str(), e.hypothesis.as_str())), "{e:?} is in train");
        }
    }

    #[test]
    fn no_pair_has_two_labels() {
        let (train, test) = demo_datasets(4, 20000, 5000);
        let mut label: HashMap<(&str, &str), u8> = HashMap::new();
        for e in train.examples.iter().chain(&test.examples) {
            let prev = *label.entry((&e.premise, &e.hypothesis)).or_insert(e.label);
            assert_eq!(prev, e.label, "{e:?}");
        }
    }

    #[test]
    fn oracle_agrees_with_every_label() {
        let mut per_family: HashMap<(Family, u8), usize> = HashMap::new();
        for (stream, n) in [(TRAIN_STREAM, 6000), (TEST_STREAM, 3000)] {
            for (f, e) in generate_tagged(9, stream, n, &HashSet::new()) {
                let want = oracle(&e.premise, &e.hypothesis);
                assert_eq!(e.label, want, "{f:?}: {:?} / {:?}", e.premise, e.hypothesis);
                *per_family.entry((f, e.label)).or_default() += 1;
            }
        }
        for f in Family::ALL {
            for l in 0..3 {
                assert_eq!(per_family.contains_key(&(f, l)), f.produces(l), "{f:?} label {l}");
            }
        }
    }

    #[test]
    fn oracle_reads_the_documented_cases() {
        let cases: &[(&str, &str, u8)] = &[
            ("a man is playing a guitar", "a person is playing an instrument", ENTAILMENT),
            ("a person is playing an instrument", "a man is playing a guitar", NEUTRAL),
            ("a man is playing a guitar", "a man is playing a piano", CONTRADICTION),
            ("a man is sleeping", "a woman is sleeping", CONTRADICTION),
            ("a woman is riding a horse", "a woman is not riding a horse", CONTRADICTION),
            ("a man is sleeping", "a man is not running", ENTAILMENT),
            ("a man is not sleeping", "a man is running", NEUTRAL),
            ("a man is not playing an instrument", "a man is not playing a guitar", ENTAILMENT),
            ("a man is not playing a guitar", "a man is not playing an instrument", NEUTRAL),
            ("all the children are sleeping", "some children are sleeping", ENTAILMENT),
            ("no children are sleeping", "some children are sleeping", CONTRADICTION),
            ("some children are sleeping", "all the children are sleeping", NEUTRAL),
            ("the dog is chasing the cat", "the cat is chasing the dog", NEUTRAL),
            ("the dog is chasing the cat", "the cat is being chased by the dog", ENTAILMENT),
            ("the dog is chasing the cat", "the dog is not chasing the cat", CONTRADICTION),
            ("the dog is chasing the cat in the park", "the cat is being chased by the dog", ENTAILMENT),
            (
                "the dog is chasing the cat in the park",
                "the dog is not chasing the cat in the park",
                CONTRADICTION,
            ),
            ("the dog is chasing the cat in the park", "the cat is chasing the dog in the park", NEUTRAL),
            ("a man is cooking", "a man is cooking soup for the family", NEUTRAL),
            ("a man is cooking soup for the family", "a man is cooking", ENTAILMENT),
            ("a man is cooking in the park", "a man is cooking in the kitchen", CONTRADICTION),
            ("a girl is sleeping", "a child is running", CONTRADICTION),
            ("a dog is sleeping in the park", "a dog is sleeping in the kitchen", CONTRADICTION),
            ("a dog is sleeping in the park", "an animal is sleeping", ENTAILMENT),
            ("a dog is sleeping", "a dog is sleeping in the park", NEUTRAL),
        ];
        for &(p, h, want) in cases {
            assert_eq!(oracle(p, h), want, "{p:?} / {h:?}");
        }
    }

    #[test]
    fn family_mix() {
        let mut per_family: HashMap<(Family, u8), usize> = HashMap::new();
        let tagged = generate_tagged(1, TRAIN_STREAM, 21000, &HashSet::new());
        for (f, e) in &tagged {
            *per_family.entry((*f, e.label)).or_default() += 1;
        }
        for f in Family::ALL {
            let c: Vec<usize> = (0..3).map(|l| per_family.get(&(f, l)).copied().unwrap_or(0)).collect();
            println!("{f:?}: entailment {} contradiction {} neutral {}", c[0], c[1], c[2]);
        }
        for (_, e) in tagged.iter().take(30) {
            println!("{} | {} | {}", e.premise, e.hypothesis, crate::data::snli::LABELS[e.label as usize]);
        }
    }
}
