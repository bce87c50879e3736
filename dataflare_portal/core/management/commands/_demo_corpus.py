"""Deterministic bilingual demo records for seed_demo: crawled web pages, chat dialogues, code snippets.

The records carry the defects a cleaning pipeline exists for (HTML remnants, boilerplate, very
short pages, exact and near duplicates, odd whitespace), so the demo pipelines have real work.
"""

import csv
import io
import json
import random

# ---- Web pages ------------------------------------------------------------------------------
EN_TOPICS = {
    "energy": [
        "Grid operators reported that solar output covered a record share of midday demand last week.",
        "Battery storage prices fell again this year, which makes evening peak shaving affordable for towns.",
        "Engineers warned that transmission lines, not generation, are now the main bottleneck.",
        "The utility plans to replace 1,200 kilometres of ageing cable before the next winter.",
        "Households with heat pumps used forty percent less energy than those heating with gas boilers.",
    ],
    "health": [
        "A new study followed 12,000 adults for ten years to measure the effect of daily walking.",
        "Researchers found that people who slept fewer than six hours had a higher risk of infection.",
        "The clinic now offers appointments in the evening so that shift workers can attend.",
        "Doctors recommend a balanced diet with more vegetables and fewer processed foods.",
        "The vaccination campaign reached remote villages with the help of mobile teams.",
    ],
    "technology": [
        "The open-source project released version 3.0 with a faster query planner.",
        "Developers can now run the model on a laptop thanks to 4-bit quantisation.",
        "The team rewrote the storage engine to reduce write amplification on SSDs.",
        "Security researchers disclosed a flaw that allowed requests to bypass the proxy.",
        "Data pipelines that deduplicate early save both storage and annotation budget.",
    ],
    "travel": [
        "The old town is best explored on foot, starting from the river and climbing to the castle.",
        "Night trains are back on several routes, and tickets sell out weeks in advance.",
        "Local guides suggest visiting the market early, before the tour buses arrive.",
        "The museum reopened after renovation with a new wing dedicated to textile history.",
        "Cyclists can follow a 60-kilometre trail along the coast with ferries between islands.",
    ],
}
ZH_TOPICS = {
    "能源": [
        "电网运营方表示，上周中午时段光伏发电占用电负荷的比例创下新高。",
        "今年储能电池价格继续下降，小城镇也能负担晚高峰的削峰填谷。",
        "工程师提醒，输电线路而非发电能力已成为主要瓶颈。",
        "供电公司计划在入冬前更换一千二百公里的老旧电缆。",
        "使用热泵的家庭比使用燃气锅炉的家庭少消耗约四成能源。",
    ],
    "健康": [
        "一项新研究对一万二千名成年人进行了十年跟踪，评估每天步行的效果。",
        "研究人员发现，每晚睡眠不足六小时的人更容易受到感染。",
        "诊所现在提供晚间门诊，方便倒班工人就诊。",
        "医生建议均衡饮食，多吃蔬菜，少吃加工食品。",
        "在流动医疗队的帮助下，疫苗接种工作覆盖了偏远村庄。",
    ],
    "科技": [
        "该开源项目发布了三点零版本，查询规划器速度明显提升。",
        "借助四比特量化，开发者现在可以在笔记本电脑上运行该模型。",
        "团队重写了存储引擎，以减少固态硬盘上的写放大。",
        "安全研究人员披露了一个可绕过代理进行请求的漏洞。",
        "在数据流水线早期进行去重，可以同时节省存储和标注预算。",
    ],
    "旅行": [
        "老城区最适合步行游览，可以从河边出发，一路登上城堡。",
        "多条线路恢复了夜间列车，车票往往提前数周售罄。",
        "当地向导建议趁旅游大巴到来之前，早点去逛集市。",
        "博物馆翻修后重新开放，新增了一个纺织史展厅。",
        "骑行者可以沿着六十公里的海岸步道前行，岛屿之间有渡轮连接。",
    ],
}
BOILERPLATE = [
    "Cookie policy | Privacy | Terms of use | © 2026 Example Media",
    "点击这里订阅 | 关于我们 | 联系方式 | 版权所有",
    "Click here",
    "加载中……",
]
CITIES_EN = ["Hangzhou", "Lyon", "Austin", "Osaka", "Porto", "Chengdu", "Gdansk", "Nairobi", "Valparaiso", "Tromso"]
CITIES_ZH = ["杭州", "成都", "西安", "厦门", "青岛", "昆明", "苏州", "长沙", "大连", "兰州"]
SOURCES_EN = ["local officials", "a university team", "industry analysts", "residents", "the city council"]
SOURCES_ZH = ["当地官员", "一所大学的研究团队", "行业分析师", "居民代表", "市政部门"]


def detail_sentence(rng: random.Random, zh: bool) -> str:
    """A sentence with names and numbers, so pages on one topic are similar but not near-duplicates."""
    month, day, n = rng.randint(1, 12), rng.randint(1, 28), rng.randint(3, 480)
    if zh:
        return (
            f"据{rng.choice(SOURCES_ZH)}介绍，{rng.choice(CITIES_ZH)}在{month}月{day}日前后"
            f"已有{n}个相关项目启动，预计第{rng.randint(2, 4)}季度公布评估结果。"
        )
    return (
        f"According to {rng.choice(SOURCES_EN)} in {rng.choice(CITIES_EN)}, {n} related projects started "
        f"around {month}/{day}, with an assessment due in quarter {rng.randint(2, 4)}."
    )


SITES = ["news.example.com", "blog.example.org", "health.example.net", "travel.example.cn", "tech.example.com.cn"]


def web_pages(n: int, seed: int = 7) -> list[dict]:
    """Crawled pages, about 55% Chinese, with HTML remnants, boilerplate, short pages and duplicates."""
    rng = random.Random(seed)
    records: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if records and roll < 0.06:  # exact duplicate of an earlier page under another URL
            dup = dict(rng.choice(records))
            dup["id"] = f"web-{i:05d}"
            dup["url"] = dup["url"].replace("/a/", "/amp/")
            records.append(dup)
            continue
        zh = rng.random() < 0.55
        topics = ZH_TOPICS if zh else EN_TOPICS
        topic = rng.choice(sorted(topics))
        sentences = rng.sample(topics[topic], k=rng.randint(2, 4))
        sentences.insert(rng.randint(0, len(sentences)), detail_sentence(rng, zh))
        text = ("" if zh else " ").join(sentences)
        title = (f"{topic}：" if zh else f"{topic.title()}: ") + sentences[0][: 18 if zh else 48].rstrip("，。 ,.")
        if roll < 0.10:
            text = f"<div class='article'><p>{text}</p></div>"
        elif roll < 0.14:
            text = rng.choice(BOILERPLATE)
        elif roll < 0.18:
            text = "  " + text.replace("。" if zh else ". ", "。\n\n   " if zh else ".  \n\n ") + "  "
        elif roll < 0.21:
            text = text + (" " if not zh else "") + rng.choice(BOILERPLATE)
        site = rng.choice(SITES)
        records.append(
            {
                "id": f"web-{i:05d}",
                "url": f"https://{site}/a/{2026 - rng.randint(0, 3)}/{rng.randint(1000, 99999)}",
                "lang": "zh" if zh else "en",
                "topic": topic,
                "title": title,
                "text": text,
                "crawled_at": f"2026-{rng.randint(1, 10):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
            }
        )
    return records


# ---- Chat dialogues -------------------------------------------------------------------------
CHAT_PAIRS = [
    (
        "如何用 Python 读取一个很大的 CSV 文件而不占满内存？",
        "可以分块读取：使用 pandas.read_csv 的 chunksize 参数，或者用标准库 csv 模块逐行迭代，每处理完一批就释放内存。",
        "coding",
    ),
    (
        "帮我把这句话翻译成英文：数据质量决定了模型的上限。",
        "Data quality sets the upper bound of what a model can achieve.",
        "translation",
    ),
    (
        "What is the difference between precision and recall?",
        "Precision is the share of predicted positives that are correct; recall is the share of actual "
        "positives that were found. Raising one often lowers the other.",
        "ml",
    ),
    (
        "请总结一下这段话的要点：团队在上线前完成了压力测试，并修复了两个内存泄漏问题。",
        "要点：上线前已完成压力测试；修复了两个内存泄漏。",
        "summarization",
    ),
    (
        "Write a polite reply declining a meeting invitation.",
        "Thank you for the invitation. Unfortunately I have a conflict at that time; could we find another "
        "slot later this week?",
        "writing",
    ),
    (
        "周末去杭州玩两天，有什么推荐的路线？",
        "第一天游西湖，走苏堤和白堤，傍晚去雷峰塔看日落；第二天去灵隐寺和龙井村，品尝龙井茶。",
        "travel",
    ),
    (
        "Explain what a circuit breaker does in a distributed system.",
        "It stops calling a failing dependency after repeated errors, fails fast for a cool-down period, "
        "then lets a trial call through to see whether the dependency has recovered.",
        "engineering",
    ),
    (
        "解释一下什么是数据去重中的 MinHash。",
        "MinHash 用多个哈希函数的最小值来近似两个集合的 Jaccard 相似度，可以快速找出近似重复的文本。",
        "ml",
    ),
    (
        "How do I politely ask my manager for feedback?",
        "Ask for a short, specific conversation: for example, 'Could we spend ten minutes on what I could do "
        "better in the last project?'",
        "writing",
    ),
    (
        "给我写一个关于秋天的四句短诗。",
        "秋风轻拂稻田黄，雁字南飞过山冈。一盏清茶话收获，满城桂子送余香。",
        "creative",
    ),
]
CHAT_PREFIXES_EN = ["", "Quick question: ", "Hi! ", "Please help: "]
CHAT_PREFIXES_ZH = ["", "请问，", "你好，", "麻烦帮忙："]


def chat_dialogs(n: int, seed: int = 11) -> list[dict]:
    """Prompt/response pairs for SFT annotation; a few have empty or truncated responses."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        prompt, response, category = rng.choice(CHAT_PAIRS)
        zh = any("\u4e00" <= ch <= "\u9fff" for ch in prompt)
        prompt = rng.choice(CHAT_PREFIXES_ZH if zh else CHAT_PREFIXES_EN) + prompt
        roll = rng.random()
        if roll < 0.04:
            response = ""
        elif roll < 0.08:
            response = response[: max(4, len(response) // 3)]
        records.append(
            {
                "id": f"chat-{i:05d}",
                "lang": "zh" if zh else "en",
                "category": category,
                "turns": 2,
                "prompt": prompt,
                "response": response,
                "text": f"{prompt}\n{response}",
            }
        )
    return records


# ---- Code snippets --------------------------------------------------------------------------
CODE_TEMPLATES = {
    "python": (
        'def {fn}({arg}):\n    """{doc}"""\n    total = 0\n    for item in {arg}:\n'
        "        total += item.{attr}\n    return total\n"
    ),
    "javascript": (
        "export function {fn}({arg}) {{\n  // {doc}\n  return {arg}.reduce((sum, x) => sum + x.{attr}, 0);\n}}\n"
    ),
    "go": (
        "// {fn} {doc}\nfunc {fn}({arg} []Item) int {{\n\ttotal := 0\n\tfor _, it := range {arg} {{\n"
        "\t\ttotal += it.{attr}\n\t}}\n\treturn total\n}}\n"
    ),
    "sql": "-- {doc}\nSELECT {attr}, COUNT(*) AS n\nFROM {arg}\nGROUP BY {attr}\nORDER BY n DESC;\n",
}
FUNCS = ["sum_tokens", "count_rows", "total_cost", "batch_size", "merge_scores", "weight_sum"]
ARGS = ["records", "items", "batches", "rows", "orders"]
ATTRS = ["tokens", "size", "cost", "score", "weight", "count"]
DOCS = ["Sum a field over a list.", "统计字段总和。", "Aggregate for the daily report.", "按批次汇总。"]
REPOS = ["dataflare/etl-tools", "example/webapp", "example/analytics", "opensource/tokenizer"]
LICENSES = ["MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0", "unknown"]
EXT = {"python": "py", "javascript": "js", "go": "go", "sql": "sql"}


def code_snippets(n: int, seed: int = 13) -> list[dict]:
    """Small functions in four languages with repeated near-identical bodies (what dedup removes)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        lang = rng.choice(sorted(CODE_TEMPLATES))
        fields = {"fn": rng.choice(FUNCS), "arg": rng.choice(ARGS), "attr": rng.choice(ATTRS), "doc": rng.choice(DOCS)}
        text = CODE_TEMPLATES[lang].format(**fields)
        repo = rng.choice(REPOS)
        records.append(
            {
                "id": f"code-{i:05d}",
                "repo": repo,
                "path": f"src/{fields['fn']}_{i % 37}.{EXT[lang]}",
                "language": lang,
                "license": rng.choice(LICENSES),
                "stars": rng.choice([0, 1, 3, 12, 40, 180, 950]),
                "text": text,
            }
        )
    return records


# ---- Serialisation --------------------------------------------------------------------------
def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def to_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()
