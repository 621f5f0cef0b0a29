#!/usr/bin/env python3
"""Fit the text weights of the input estimator (src/estimate/text.rs, WEIGHTS).

One-off, offline, never run by tests. Texts come from files on a Debian machine with vim,
Python 3.11, a Rust toolchain and a cargo registry cache, and are deliberately *not* the
texts of the test corpus (other languages' vim tutors, other source files, other prose), so
the corpus measures the estimator on text it was not fitted to.

    mkdir -p /tmp/tok && (cd /tmp/tok && npm install @anthropic-ai/tokenizer@0.0.4)
    cargo build --release -p sluice-limits --example estimator_features
    TOKENIZER_DIR=/tmp/tok python3 calibrate.py ../../../../target/release/examples/estimator_features
"""
import glob, html, json, os, random, re, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
random.seed(7)


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def strip_html(s):
    s = re.sub(r"(?s)<(script|style).*?</\1>", " ", s)
    s = re.sub(r"<[^>]+>", " ", s)
    return re.sub(r"[ \t]+", " ", html.unescape(s))


def chunks(kind, text, n, lo=200, hi=4000):
    """n random line-aligned slices of text."""
    out = []
    for _ in range(n):
        size = int(lo * (hi / lo) ** random.random())
        if len(text) <= size:
            start = 0
        else:
            start = random.randrange(0, len(text) - size)
            nl = text.find("\n", start)
            start = nl + 1 if 0 <= nl < start + 200 else start
        piece = text[start:start + size]
        if piece.strip():
            out.append((kind, piece))
    return out


def sources():
    tut = "/usr/share/vim/vim90/tutor/tutor.{}.utf-8"
    py = "/root/.pyenv/versions/3.11.7/lib/python3.11/"
    reg = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))[0]
    rbe = glob.glob(os.path.expanduser(
        "~/.rustup/toolchains/stable-*/share/doc/rust/html/rust-by-example/"))[0]
    texts = []
    for lang in ["bg", "uk", "el", "es", "it", "pl", "cs", "sv", "tr", "vi", "ko", "zh_tw", "hu", "nl", "pt", "sk", "eo"]:
        p = tut.format(lang)
        if os.path.exists(p):
            texts += chunks("tutor-" + lang, read(p), 6)
    for lic in ["Apache-2.0", "GPL-3", "MPL-2.0"]:
        texts += chunks("prose-en", read("/usr/share/common-licenses/" + lic), 6)
    for readme in glob.glob(reg + "*/README.md")[:40]:
        texts += chunks("markdown-en", read(readme), 1)
    for mod in ["argparse.py", "json/decoder.py", "textwrap.py", "csv.py", "difflib.py", "asyncio/tasks.py"]:
        texts += chunks("code-py", read(py + mod), 4)
    for rs in glob.glob(reg + "memchr-*/src/**/*.rs", recursive=True)[:8] + \
            glob.glob(reg + "aho-corasick-*/src/**/*.rs", recursive=True)[:8]:
        texts += chunks("code-rs", read(rs), 1)
    for js in glob.glob(py + "site-packages/botocore/data/s*/*/service-2.json")[:6]:
        doc = json.loads(read(js))
        texts += chunks("json-pretty", json.dumps(doc, indent=2)[:60000], 2)
        texts += chunks("json-compact", json.dumps(doc)[:60000], 2)
    for lang in ["ja", "zh"]:
        for page in sorted(glob.glob(rbe + lang + "/std/*.html"))[:6]:
            texts += chunks("rbe-" + lang, strip_html(read(page)), 1)
    for enc in ["big5-utf8", "euc_jp-utf8", "cp949-utf8", "gb18030-utf8"]:
        p = py + "test/cjkencodings/" + enc + ".txt"
        if os.path.exists(p):
            texts.append(("cjk-" + enc, read(p)))
    texts += [("short-" + k, t) for k, t in SHORT]
    return texts


# Short texts written for calibration only (the corpus has its own).
SHORT = [
    ("ar", "مرحبا، أريد أن أعرف حالة طلبي رقم ٤٥٢١. لقد طلبته قبل أسبوعين ولم يصل بعد، هل يمكنك المساعدة؟"),
    ("ar", "تعتمد جودة الترجمة الآلية على حجم البيانات المتاحة للغة المصدر واللغة الهدف، وعلى مدى تشابه البنية النحوية بينهما. "
           "ولذلك فإن الأنظمة الحديثة تستخدم نماذج كبيرة تتعلم من ملايين الجمل المترجمة."),
    ("en", "Can you summarise this in two sentences? I need it for the standup."),
    ("en", "Thanks! One more thing: what's the difference between a mutex and a semaphore?"),
    ("emoji", "Great job team 🎉🎉 the launch went smoothly 🚀 — see you all on Monday 😊👍"),
    ("emoji", "Status: ✅ build ❌ deploy ⚠️ flaky tests 🔥🔥🔥"),
    ("de", "Könnten Sie mir bitte erklären, warum die Rechnung höher ausgefallen ist als im Vormonat?"),
    ("fr", "Bonjour, je voudrais modifier l'adresse de livraison de ma commande passée hier soir."),
    ("ru", "Подскажите, пожалуйста, как настроить резервное копирование базы данных каждую ночь."),
    ("ja", "来週の会議の議題をまとめてください。特に予算の件を優先したいです。"),
    ("zh", "请帮我把这段代码改写成异步版本，并解释一下性能上的差异。"),
    ("num", "Order 88213 shipped 2024-03-17; tracking 1Z999AA10123456784, total $1,249.99 (tax 8.25%)."),
]


def run(cmd, lines, env=None):
    p = subprocess.run(cmd, input="".join(json.dumps(l) + "\n" for l in lines),
                       capture_output=True, text=True, env=env, check=True)
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


def nnls(X, y, iters=20000, lr=None):
    """Non-negative least squares by projected coordinate descent (small problem)."""
    n = len(X[0])
    w = [0.5] * n
    cols = [[row[j] for row in X] for j in range(n)]
    norms = [sum(c * c for c in col) or 1.0 for col in cols]
    r = [yi - sum(wj * xj for wj, xj in zip(w, row)) for row, yi in zip(X, y)]
    for _ in range(200):
        for j in range(n):
            g = sum(c * ri for c, ri in zip(cols[j], r))
            new = max(0.0, w[j] + g / norms[j])
            d = new - w[j]
            if d:
                r = [ri - d * c for ri, c in zip(r, cols[j])]
                w[j] = new
    return w


def main():
    features_bin = sys.argv[1]
    texts = sources()
    rows = [{"id": i, "text": t} for i, (_, t) in enumerate(texts)]
    counts = run(["node", os.path.join(HERE, "count_tokens.mjs")], rows)
    feats = run([features_bin], rows)
    y = [c["tokens"] for c in counts]
    X = [f["features"] for f in feats]
    # Relative error matters, not absolute: weight each text by 1/tokens.
    Xw = [[x / max(yi, 1) for x in row] for row, yi in zip(X, y)]
    yw = [1.0] * len(y)
    w = nnls(Xw, yw)
    names = ["words", "letters", "long_letters", "digit_runs", "digits", "punct", "punct_runs",
             "ws_runs", "newlines", "latin_ext", "cyrillic", "other_alpha2", "cjk", "hangul", "other3", "astral", "letters of non-English text"]
    print("const WEIGHTS: [f64; 17] = [")
    for n, v in zip(names, w):
        print(f"    {v:.3f}, // {n}")
    print("];")
    errs = sorted(abs(sum(a * b for a, b in zip(w, row)) / max(yi, 1) - 1) for row, yi in zip(X, y))
    print(f"# {len(y)} texts; fit |rel err| median {errs[len(errs)//2]:.3f} p90 {errs[int(len(errs)*0.9)]:.3f} max {errs[-1]:.3f}")
    by = {}
    for (k, _), row, yi in zip(texts, X, y):
        by.setdefault(k if k.startswith(("tutor", "cjk", "rbe")) else k.split("-")[0], []).append(sum(a * b for a, b in zip(w, row)) / max(yi, 1) - 1)
    for k, v in sorted(by.items()):
        print(f"#   {k:10s} n={len(v):3d} mean {sum(v)/len(v):+.3f} worst {max(v, key=abs):+.3f}")


if __name__ == "__main__":
    main()
