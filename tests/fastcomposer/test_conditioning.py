"""Marker syntax, token positions in the WebUI's chunked layout, delayed conditioning."""

import pytest

from lib_freediff.errors import ParamError
from lib_freediff.fastcomposer.conditioning import (check_subject_count, delayed_switch_step, find_markers,
                                                    parse_attention_with_offsets, subject_positions,
                                                    token_positions, use_augmented)


def webui_layout(prompt, tokenize, backtrack=20, emphasis=True):
    """Independent model of the WebUI's chunking for the tests: the flat token ids of the concatenated
    (77*k) conditioning (BOS/EOS as -1/-2)."""
    if emphasis:
        parsed = [(t, w) for t, w, _ in parse_attention_with_offsets(prompt)]
    else:
        parsed = [(prompt, 1.0)]
    comma = tokenize(",")[0]
    chunks, cur, last_comma = [], [], -1

    def close():
        nonlocal cur, last_comma
        chunks.append([-1] + cur + [-2] * (75 - len(cur)) + [-2])
        cur, last_comma = [], -1

    for text, w in parsed:
        if text == "BREAK" and w == -1:
            close()
            continue
        for tok in tokenize(text):
            if tok == comma:
                last_comma = len(cur)
            elif backtrack and len(cur) == 75 and last_comma != -1 and len(cur) - last_comma <= backtrack:
                moved = cur[last_comma + 1:]
                cur = cur[:last_comma + 1]
                close()
                cur = moved
            if len(cur) == 75:
                close()
            cur.append(tok)
    if cur or not chunks:
        close()
    return [t for c in chunks for t in c]


# ---------------------------------------------------------------------------------------------- markers

@pytest.mark.parametrize("prompt, clean, nouns", [
    ("a man img and a woman img at the beach", "a man and a woman at the beach", ["man", "woman"]),
    ("(a man img:1.2) and a woman img", "(a man:1.2) and a woman", ["man", "woman"]),
    ("(a man:1.2) img, beach", "(a man:1.2), beach", ["man"]),
    ("[a tall man] img", "[a tall man]", ["man"]),
    ("a man, img", "a man,", ["man"]),
    ("a man's img dog", "a man's dog", ["man's"]),
    ("a t-shirt img", "a t-shirt", ["t-shirt"]),
    ("photo of a man img", "photo of a man", ["man"]),
    ("a man\timg\nand", "a man\nand", ["man"]),
    ("[a man img|a dog]", "[a man|a dog]", ["man"]),
    ("a man img BREAK a woman img", "a man BREAK a woman", ["man", "woman"]),
])
def test_find_markers(prompt, clean, nouns):
    m = find_markers(prompt)
    assert m.clean_prompt == clean
    assert m.nouns == nouns
    c, spans = m  # unpacks as (clean_prompt, spans)
    assert [c[a:b] for a, b in spans] == nouns


@pytest.mark.parametrize("prompt", [
    "img of a cat", "an Img", "an IMG of", "imgur logo", "img_01 file", "a cat <lora:img:1>",
    "an image", "a man with img2img",
])
def test_not_markers(prompt):
    m = find_markers(prompt)
    assert m.clean_prompt == prompt and m.spans == []


@pytest.mark.parametrize("prompt", ["a ( img", "a man img img", "BREAK img"])
def test_marker_without_noun_is_an_error(prompt):
    with pytest.raises(ParamError) as e:
        find_markers(prompt)
    assert e.value.param == "prompt"


def test_count_mismatch_names_images():
    check_subject_count(2, 2)
    with pytest.raises(ParamError) as e:
        check_subject_count(2, 1)
    assert e.value.param == "images" and e.value.feature == "FastComposer"
    assert "2 subject" in str(e.value) and "1 reference image" in str(e.value)


# ---------------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("(a: 1.5 )", [("a", 1.5)]),
])
def test_attention_parse_matches_webui(text, expected):
    got = parse_attention_with_offsets(text)
    assert [t for t, _, _ in got] == [t for t, _ in expected]
    assert [w for _, w, _ in got] == pytest.approx([w for _, w in expected])
    for frag, _w, offs in got:  # offsets point at the characters of the fragment
        if frag != "BREAK":
            assert "".join(text[o] for o in offs) == frag


# ---------------------------------------------------------------------------------------------- positions

def _check_against_layout(prompt_with_markers, tokenize, **kw):
    lay = subject_positions(prompt_with_markers, tokenize, **kw)
    flat = webui_layout(lay.clean_prompt, tokenize, backtrack=kw.get("comma_padding_backtrack", 20),
                        emphasis=kw.get("emphasis", True))
    assert len(flat) == 77 * lay.chunks
    for noun, pos in zip(lay.nouns, lay.positions):
        assert flat[pos] == tokenize(noun)[-1], (noun, pos)
    return lay


def test_simple_positions(tokenize):
    lay = _check_against_layout("a man img and a woman img at the beach", tokenize)
    # BOS a man and a woman at the beach → man at 2, woman at 5
    assert lay.positions == [2, 5]
    assert lay.clean_prompt == "a man and a woman at the beach" and lay.chunks == 1


def test_emphasis_positions(tokenize):
    lay = _check_against_layout("(a man img:1.2) and [a woman img] at ((the beach))", tokenize)
    assert lay.positions == [2, 5]
    lay = _check_against_layout("a (tall:1.3) man img and a woman img", tokenize)
    assert lay.positions == [3, 6]


def test_emphasis_none_counts_bracket_tokens(tokenize):
    lay = _check_against_layout("(a man img:1.2) and a woman img", tokenize, emphasis=False)
    # ( a man : 1 . 2 ) and a woman
    assert lay.positions == [3, 11]


def test_multi_token_noun_uses_last_subtoken(tokenize):
    assert len(tokenize("dumbledore")) == 3
    lay = _check_against_layout("a photo of dumbledore img and a man img", tokenize)
    assert lay.positions == [1 + 3 + 2, 1 + 3 + 3 + 2]
    lay = _check_against_layout("a man's img dog", tokenize)
    assert lay.positions == [3]  # a man 's → "'s"


def test_break_starts_a_new_chunk(tokenize):
    lay = _check_against_layout("a man img BREAK a woman img", tokenize)
    assert lay.positions == [2, 77 + 2] and lay.chunks == 2


def test_long_prompts_two_and_three_chunks(tokenize):
    filler = "red " * 80
    lay = _check_against_layout(f"a photo of {filler}man img", tokenize)
    assert lay.positions == [77 + 1 + (3 + 80 - 75)] and lay.chunks == 2
    lay = _check_against_layout(f"a man img {'blue ' * 160} and a woman img smiling", tokenize)
    # woman is token 1 + 1 + 160 + 2 = 164 of the prompt → chunk 2, index 14
    assert lay.positions == [2, 2 * 77 + 1 + 14] and lay.chunks == 3


def test_comma_backtrack_moves_the_noun(tokenize):
    prompt = "red " * 70 + ", a tall man img standing in the park"
    lay = _check_against_layout(prompt, tokenize)
    assert lay.positions == [77 + 1 + 2]  # 'a tall man standing' moved to chunk 1
    lay0 = _check_against_layout(prompt, tokenize, comma_padding_backtrack=0)
    assert lay0.positions == [1 + 73]
    far = "red " * 40 + ", " + "blue " * 33 + "man img standing still"  # comma 34 tokens back: no move
    lay = _check_against_layout(far, tokenize)
    assert lay.positions == [1 + 74]


def test_textual_inversion_embedding(tokenize):
    emb_tokens = tokenize("charturnerv2")
    assert len(emb_tokens) == 4

    def find_embedding(tokens, pos):
        if tokens[pos:pos + len(emb_tokens)] == emb_tokens:
            return (6, len(emb_tokens))  # 6 vectors for 4 text tokens
        return None

    lay = subject_positions("charturnerv2, a man img", tokenize, find_embedding=find_embedding)
    assert lay.positions == [1 + 6 + 1 + 1]
    lay = subject_positions("a charturnerv2 img", tokenize, find_embedding=find_embedding)
    assert lay.positions == [1 + 1 + 5]  # marked word is the embedding → its last vector


def test_token_positions_from_spans(tokenize):
    clean, spans = find_markers("a man img and a woman img")
    assert token_positions(clean, spans, tokenize) == [2, 5]
    assert token_positions("a cat", [], tokenize) == []


# ---------------------------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("alpha, steps, switch", [
    (0.7, 20, 6), (0.0, 20, 20), (1.0, 20, 0), (0.75, 50, 12), (0.9, 10, 1), (0.5, 0, 0), (0.6, 30, 12),
])
def test_delayed_switch_step(alpha, steps, switch):
    assert delayed_switch_step(alpha, steps) == switch
    flags = [use_augmented(i, alpha, steps) for i in range(steps)]
    assert flags == [i >= switch for i in range(steps)]


def test_alpha_extremes():
    assert not any(use_augmented(i, 0.0, 20) for i in range(20))
    assert all(use_augmented(i, 1.0, 20) for i in range(20))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "x", float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ParamError) as e:
        delayed_switch_step(alpha, 20)
    assert e.value.param == "alpha"


def test_random_prompts_agree_with_the_layout_model(tokenize):
    """Seeded fuzz: emphasis, weights, BREAK, commas, long prompts; the token at each computed position
    is the marked noun's last sub-token in the WebUI-style layout."""
    import random

    rng = random.Random(1234)
    words = ["a", "photo", "of", "red", "tall", "beach", "sunset", "dumbledore", "golden", "hour", "man's",
             "t-shirt", "r2d2", "highly", "detailed"]
    nouns = ["man", "woman", "dog", "einstein", "dumbledore", "cat", "robot"]
    for _ in range(150):
        parts, n_markers = [], 0
        for _ in range(rng.randint(1, 60)):
            r = rng.random()
            if r < 0.08:
                noun = rng.choice(nouns)
                form = rng.choice(["{} img", "({} img)", "({} img:1.3)", "[{} img]", "({}:0.8) img", "{}, img"])
                parts.append(form.format(noun))
                n_markers += 1
            elif r < 0.15:
                parts.append(",")
            elif r < 0.17:
                parts.append("BREAK")
            elif r < 0.22:
                parts.append("(" + rng.choice(words) + ")")
            else:
                parts.append(rng.choice(words))
        prompt = " ".join(parts)
        lay = _check_against_layout(prompt, tokenize, comma_padding_backtrack=rng.choice([0, 20]))
        assert len(lay.positions) == n_markers
        assert "img" not in lay.clean_prompt.split()
