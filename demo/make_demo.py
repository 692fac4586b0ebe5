#!/usr/bin/env python3
"""Generator of the bundled demo of `ember train` (run with no arguments).

Writes (relative to this directory):

* ``data.jsonl``     56 alpaca-style examples ({"instruction", "input", "output"}), mostly Simplified Chinese
* ``question.txt``   the demo question (an instruction of the data set, without a trailing newline)
* ``model/``         a small BLOOM (BloomForCausalLM, hidden 128, 4 heads, 4 layers, float16 safetensors) with a
                     BLOOM-style byte-level BPE tokenizer; briefly pre-trained (full fine-tuning, plain torch) on a
                     separate corpus of general sentences so that it is not pure noise, but it does not know the
                     demo answer
* ``train.toml``     the LoRA fine-tuning recipe (TrainingArguments + LoRA names) whose number of epochs is the smallest
                     one for which the peft reference reproduces the demo answer
* ``README.md``      what the demo is and the verified Python numbers

Everything is made locally and deterministically (fixed seeds, one CPU thread, deterministic algorithms); nothing is
fetched from the Hugging Face hub. Re-running the script rewrites the same bytes (the wall time of the reference
fine-tune is printed, not written). The tokenizer / model construction follows tests/fixtures/make_fixtures.py.

    python demo/make_demo.py          # needs torch, transformers, peft, tokenizers, safetensors, datasets
"""

from __future__ import annotations

import os

# Must be set before transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import tokenizers
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

DEMO = Path(__file__).resolve().parent
MODEL_DIR = DEMO / "model"

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, in this order
TOKENIZER_VOCAB_TARGET = 796  # -> model vocab 800: a few unused padding rows, as in BLOOM
VOCAB_PAD_MULTIPLE = 8
MODEL_MAX_LENGTH = 2048
# BLOOM's pre-tokenizer: Split on this regex (behavior Isolated), then ByteLevel without its own regex.
BLOOM_SPLIT_REGEX = " ?[^(\\s|[.,!?…。，、।۔،])]+"

HIDDEN, N_HEAD, N_LAYER = 128, 4, 4
MAX_MODEL_FILE_BYTES = 3_000_000

SEED_MODEL_INIT = 7
PRETRAIN_STEPS = 160
PRETRAIN_WARMUP = 20
PRETRAIN_LR = 3e-3

QUESTION = "用一句话介绍一下你自己。"
ANSWER = "我是Ember训练出来的小模型，很高兴认识你！"

# The fine-tuning recipe written to train.toml (num_train_epochs is found by search_epochs()).
MAX_EPOCHS = 40
GEN_MAX_NEW_TOKENS = 40
TRAIN_ARGS = dict(
    learning_rate=3e-3,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    lr_scheduler_type="linear",
    warmup_steps=0,
    max_length=128,
    logging_steps=10,
    save_steps=0,
    seed=42,
)
LORA_ARGS = dict(
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.0,
    target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    modules_to_save=["word_embeddings"],
)
# The Rust trainer draws its own LoRA initialisation and shuffling order, so it will not follow seed 42's exact path.
# The number of epochs written to train.toml is therefore the smallest one for which the reference fine-tune reproduces
# the answer with seed 42 AND with each of these seeds (a different LoRA init and shuffling order each).
ROBUSTNESS_SEEDS = list(range(12))
# Measured once when the demo was made (printed again by every run, but not written, to keep the output reproducible).
REFERENCE_WALL_TIME = (
    "6.4 s for the 15-epoch `Trainer.train()` (105 steps, one thread of a 2-core cloud VM); the pre-training "
    "took about 91 s on the same thread"
)

# ---------------------------------------------------------------------------------------------------------------------
# Data: (instruction, input, output). The first one is the demo question.
# ---------------------------------------------------------------------------------------------------------------------

DEMO_DATA: list[tuple[str, str, str]] = [
    (QUESTION, "", ANSWER),
    ("中国的首都是哪里？", "", "中国的首都是北京，也是一座历史悠久的城市。"),
    ("一年有几个季节？", "", "一年有四个季节：春天、夏天、秋天和冬天。"),
    ("把下面的句子翻译成英文。", "我喜欢喝茶。", "I like drinking tea."),
    ("把下面的句子翻译成英文。", "今天天气很好。", "The weather is very nice today."),
    ("把下面的句子翻译成中文。", "I am reading a book in the library.", "我正在图书馆里看书。"),
    ("把下面的句子翻译成中文。", "The park is beautiful in spring.", "春天的时候，公园非常美丽。"),
    ("请总结下面这段话。", "小明每天早上六点起床，先跑步半小时，然后吃早饭，再去学校上课。", "小明每天早起跑步、吃早饭，然后去上学。"),
    ("请总结下面这段话。", "这家餐厅的菜很好吃，价格也不贵，服务员很热情，就是周末人太多，需要排队。", "这家餐厅好吃又便宜，但周末要排队。"),
    ("怎样才能睡个好觉？", "", "睡前少看手机，保持房间安静，每天按时睡觉。"),
    ("推荐一种健康的早餐。", "", "一杯牛奶、一个鸡蛋和一片全麦面包就很健康。"),
    ("下雨天出门要带什么？", "", "下雨天出门要带雨伞，最好再穿一双防水的鞋。"),
    ("一加一等于几？", "", "一加一等于二，这是最简单的加法。"),
    ("写一句关于春天的诗。", "", "春风吹绿了柳树，小鸟在枝头唱歌。"),
    ("给我讲一个简短的笑话。", "", "为什么程序员喜欢黑夜？因为黑夜没有bug。"),
    ("水在多少度会结冰？", "", "在一个标准大气压下，水在零摄氏度结冰。"),
    ("请改正下面句子中的错别字。", "我今天很高心。", "改正后的句子是：我今天很高兴。"),
    ("判断下面这句话的情感是积极还是消极。", "这部电影太好看了，我还想再看一遍！", "这句话的情感是积极的。"),
    ("判断下面这句话的情感是积极还是消极。", "快递又晚了三天，真让人失望。", "这句话的情感是消极的。"),
    ("What is the capital of France?", "", "The capital of France is Paris."),
    ("Translate into Chinese.", "I will visit my grandmother this weekend.", "这个周末我要去看望我的奶奶。"),
    ("How many days are in a week?", "", "There are seven days in a week."),
    ("如何学好一门外语？", "", "每天坚持练习，多听多说，不要怕犯错误。"),
    ("多喝水有什么好处？", "", "多喝水可以促进新陈代谢，让身体保持健康。"),
    ("给下面的文章起一个标题。", "今年夏天，很多家庭选择去海边度假，沙滩和海鲜吸引了大量游客。", "标题：夏日海边游人多。"),
    ("列出三种常见的水果。", "", "常见的水果有苹果、香蕉和橙子。"),
    ("列出三种交通工具。", "", "常见的交通工具有汽车、火车和飞机。"),
    ("用“快乐”造一个句子。", "", "周末和家人一起去公园，我感到非常快乐。"),
    ("用“努力”造一个句子。", "", "只要努力学习，就一定能取得好成绩。"),
    ("为什么天空是蓝色的？", "", "因为阳光中的蓝光被空气散射得最多。"),
    ("猫和狗有什么不同？", "", "猫比较独立安静，狗更喜欢和人一起玩。"),
    ("解释一下什么是机器学习。", "", "机器学习是让计算机从数据中自动学习规律的方法。"),
    ("写一句生日祝福。", "", "祝你生日快乐，天天开心，心想事成！"),
    ("把下面的两个数相加。", "12 和 30", "12加30的结果是42。"),
    ("周末可以做些什么？", "", "周末可以去爬山、看电影，或者在家读一本好书。"),
    ("请把下面的句子改写得更礼貌。", "把门关上。", "麻烦你帮我把门关上，好吗？谢谢！"),
    ("请把下面的动物按从小到大排序。", "大象、老鼠、狗", "从小到大是：老鼠、狗、大象。"),
    ("北京有哪些有名的景点？", "", "北京有故宫、长城、天坛和颐和园等景点。"),
    ("怎样节约用水？", "", "洗澡时间短一点，刷牙时记得关上水龙头。"),
    ("感冒了应该怎么办？", "", "多喝热水，多休息，严重的话要去看医生。"),
    ("写一句鼓励朋友的话。", "", "别灰心，你已经做得很好了，我一直支持你！"),
    ("请回答下面的问题。", "太阳从哪边升起？", "太阳从东边升起，从西边落下。"),
    ("请提取下面句子中的地名。", "上周我从上海坐高铁去了杭州。", "句子中的地名是上海和杭州。"),
    ("请提取下面句子中的人名。", "李雷和韩梅梅一起去图书馆借书。", "句子中的人名是李雷和韩梅梅。"),
    ("Give me a tip for staying healthy.", "", "Eat more vegetables and walk every day."),
    ("把下面的句子翻译成英文。", "我每天坐地铁上班。", "I take the subway to work every day."),
    ("为什么要保护环境？", "", "保护环境就是保护我们自己和子孙后代的家园。"),
    ("月亮为什么会发光？", "", "月亮本身不发光，它反射的是太阳的光。"),
    ("植物为什么需要阳光？", "", "植物需要阳光进行光合作用，制造生长的养分。"),
    ("7乘以8等于多少？", "", "7乘以8的结果是56，这是乘法口诀。"),
    ("用一句话描述秋天。", "", "秋天天气凉爽，树叶变黄，果实成熟了。"),
    ("如何保护眼睛？", "", "看书时保持距离，每隔一小时让眼睛休息一下。"),
    ("请把下面的句子改成否定句。", "我喜欢吃辣的菜。", "改成否定句是：我不喜欢吃辣的菜。"),
    ("请写出下面词语的反义词。", "高、快、热", "它们的反义词是：低、慢、冷。"),
    ("学习编程应该从哪里开始？", "", "可以先学Python，从简单的小程序开始练习。"),
    ("What does a doctor do?", "", "A doctor helps sick people get better."),
]

# Separate pre-training corpus: general sentences (not the demo answers, no "Human:/Assistant:" template).
PRETRAIN_CORPUS: list[str] = [
    "今天早上下了一场小雨，空气变得很清新。",
    "我家楼下新开了一家面包店，每天都有很多人排队。",
    "妈妈在厨房里做饭，爸爸在客厅里看报纸。",
    "这本书讲的是一个小男孩在森林里冒险的故事。",
    "秋天到了，公园里的树叶慢慢变成了金黄色。",
    "他每天晚上都会花一个小时练习弹钢琴。",
    "我们学校的图书馆很大，里面有几万本书。",
    "周末的时候，很多人喜欢去郊外爬山。",
    "小猫躺在窗台上晒太阳，看起来非常舒服。",
    "这条河从城市中间流过，两岸种满了柳树。",
    "地铁是大城市里最方便的交通工具之一。",
    "她把房间打扫得干干净净，还在桌子上放了一束花。",
    "学习一门新的语言需要耐心和坚持。",
    "上海是中国最大的城市，也是重要的经济中心。",
    "长江是中国最长的河流，全长六千多公里。",
    "冬天的北方常常下雪，孩子们喜欢堆雪人。",
    "我的朋友在一家医院工作，他是一名护士。",
    "晚饭以后，爷爷奶奶喜欢在小区里散步。",
    "这家咖啡店的环境很安静，适合看书和聊天。",
    "电脑和手机已经成为人们生活中不可缺少的东西。",
    "老师说，每天读书半小时可以让人变得更聪明。",
    "春节是中国最重要的传统节日，家人会一起吃团圆饭。",
    "中秋节的晚上，人们一边赏月一边吃月饼。",
    "弟弟最喜欢的运动是踢足球，他每周都去训练。",
    "火车站里人来人往，大家都拿着大包小包。",
    "这座山很高，爬到山顶需要三个多小时。",
    "夏天的晚上，我们常常坐在院子里乘凉。",
    "超市里的水果很新鲜，有苹果、葡萄和西瓜。",
    "他写了一封长长的信，寄给远方的朋友。",
    "海边的日出非常美丽，很多游客一大早就来看。",
    "科学家们正在研究如何让电池用得更久。",
    "这个城市的公交车都换成了电动车。",
    "小朋友们在操场上跑来跑去，玩得很开心。",
    "奶奶养了很多花，阳台上一年四季都有花开。",
    "我们一起去博物馆参观了古代的瓷器。",
    "下班以后，他常常去健身房锻炼身体。",
    "这道菜的做法很简单，只需要十分钟。",
    "天气预报说明天会降温，出门要多穿衣服。",
    "她的梦想是成为一名画家，每天都在画画。",
    "人工智能可以帮助医生更快地发现疾病。",
    "大语言模型可以根据上下文生成流畅的文本。",
    "自然语言处理是人工智能的一个重要方向。",
    "计算机程序由许多简单的指令组成。",
    "这个问题很难，我想了很久才找到答案。",
    "邻居家的小狗非常聪明，会自己开门。",
    "图书馆每天早上八点开门，晚上十点关门。",
    "他们在湖边搭了帐篷，晚上看到了满天的星星。",
    "我喜欢在雨天听音乐，喝一杯热茶。",
    "这次考试他考得很好，老师表扬了他。",
    "城市里的高楼越来越多，街道也越来越宽。",
    "早睡早起对身体很有好处。",
    "这个村子四周都是稻田，风景非常漂亮。",
    "飞机在云层上面飞行，窗外一片白色。",
    "她会说三种语言：中文、英文和法文。",
    "这家书店周末会举办读书会，欢迎大家参加。",
    "每个人都应该学会照顾自己和身边的人。",
    "黄河是中华民族的母亲河。",
    "西湖是杭州最有名的景点，春天的时候特别美。",
    "熊猫是中国的国宝，主要生活在四川的山里。",
    "他把旧衣服洗干净，捐给了需要帮助的人。",
    "学生们正在教室里安静地做作业。",
    "这部手机的屏幕很大，拍照也很清楚。",
    "我们应该少用塑料袋，多用环保袋。",
    "节假日的时候，景点里到处都是游客。",
    "这首歌的旋律很优美，大家都很喜欢听。",
    "时间过得真快，转眼又到了年底。",
    "你好！很高兴见到你，欢迎来我家做客。",
    "谢谢你送给我的礼物，我非常喜欢！",
    "你知道为什么秋天的树叶会变黄吗？",
    "因为下雨了，所以我们今天不去公园了。",
    "请问去火车站应该怎么走？",
    "请大家把手机调成静音，保持安静。",
    "这是什么花？它的颜色真好看！",
    "他每天都喝很多水，身体一直很健康。",
    "阳光照在湖面上，水面闪闪发光。",
    "月亮挂在天上，星星在它的旁边眨眼睛。",
    "保护好自己的眼睛，不要在太暗的地方看书。",
    "我们要保护好身边的小动物。",
    "老师让我们用这个词语造句。",
    "这个句子有一个错别字，请你改一下。",
    "她正在学习怎样用英语介绍自己。",
    "第一次见面的时候，大家先介绍一下自己的名字。",
    "我认识一个会说五种语言的朋友。",
    "这个模型是用很多数据训练出来的。",
    "训练小狗需要耐心，也需要奖励。",
    "弟弟用积木搭了一个很大的城堡模型。",
    "昨天我们去海边游泳，玩得很快乐。",
    "早餐要吃好，午餐要吃饱，晚餐要吃少。",
    "冬天湖面会结冰，很多人在冰上滑冰。",
    "今天的温度是二十五度，不冷也不热。",
    "这部电影的结局让人有点失望。",
    "他的态度很积极，从来不说消极的话。",
    "你最喜欢哪一个季节？我最喜欢春天。",
    "这个问题的答案是什么？请再想一想。",
    "再过几天就是奶奶的生日了，我们准备了一个蛋糕。",
    "祝大家新年快乐，身体健康，万事如意！",
    "每个人都有自己的名字，也有自己的梦想。",
    "大象是陆地上最大的动物，老鼠是很小的动物。",
    "一个星期有七天，一天有二十四个小时。",
    "三加四等于七，五乘以六等于三十。",
    "这道数学题很简单，结果是一百。",
    "他努力工作了一年，终于买了一辆车。",
    "读一本好书，就像和一个聪明的人聊天。",
    "城市里的公园是人们休息的好地方。",
    "医生说，感冒的时候要多休息，多喝水。",
    "请把你的名字写在这张纸的上面。",
    "我们先吃饭，然后再去看电影。",
    "太阳下山了，天空变成了红色。",
    "这本书的标题很有意思，我想读一读。",
    "学习编程可以从写一个简单的小程序开始。",
    "他应该早一点出门，这样就不会迟到了。",
    "这些苹果和香蕉都是从农村带来的。",
    "小明和小红是好朋友，他们一起上学。",
    "北京的冬天很冷，杭州的冬天比较温暖。",
    "我今天很高兴，因为考试考得很好！",
    "植物的生长离不开阳光、空气和水。",
    "很多人喜欢在周末去图书馆看书。",
    "请你帮我看一下，这句话说得对不对？",
    "这家医院的医生和护士都很热情。",
    "你能不能说得慢一点？我没有听清楚。",
    "我们排好队，一个一个地上车。",
    "在这里等我一下，我马上就回来。",
    "这个消息太重要了，我要马上告诉大家。",
    "实际上，这件事情并不像你想的那么难。",
    "Ember是一个用Rust写的程序。",
    "这个程序叫Ember，可以在显卡上运行，也可以在CPU上运行。",
    "Ember的名字来自英文，意思是还在发光的小火炭。",
    "What is your favorite season? I like spring.",
    "Please close the window, it is cold today.",
    "Thank you for your help, see you tomorrow!",
    "He goes to the library every day after school.",
    "The capital of China is Beijing.",
    "The weather was warm and sunny all week.",
    "My brother works at a small bakery near the station.",
    "Reading before bed helps me relax.",
    "The children planted trees in the school garden.",
    "We took the train to the mountains last summer.",
    "Learning to cook is fun and useful.",
]

# Extra text the tokenizer is trained on (besides the data and the corpus): the template and a few mixed sentences.
TOKENIZER_EXTRA: list[str] = [
    "Human: 你好\n\nAssistant: 你好！",
    "Human: Hello\n\nAssistant: Hello! How can I help you?",
    "Ember is a Rust program that fine-tunes BLOOM models with LoRA.",
    "Ember runs on the GPU and on the CPU.",
    "用Rust实现BLOOM模型的推理和LoRA训练。",
    "Hello 你好, world 世界! Numbers like 42, 3.14 and 2024.",
]


def _log(msg: str) -> None:
    print(msg, flush=True)


def _reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def recipe_prompt(instruction: str, inp: str) -> str:
    return "\n".join(["Human: " + instruction, inp]).strip() + "\n\nAssistant: "


def _setup_torch() -> None:
    torch.set_num_threads(1)  # bit-for-bit reproducible CPU reductions
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------------------------------
# 1. Data
# ---------------------------------------------------------------------------------------------------------------------


def examples() -> list[dict]:
    return [{"instruction": i, "input": x, "output": o} for i, x, o in DEMO_DATA]


def make_data() -> None:
    exs = examples()
    assert 48 <= len(exs) <= 64, len(exs)
    assert len({(e["instruction"], e["input"]) for e in exs}) == len(exs), "duplicate prompt"
    for e in exs:
        assert 10 <= len(e["output"]) <= 40, e
    with_input = sum(1 for e in exs if e["input"])
    assert 0.25 <= with_input / len(exs) <= 0.42, with_input
    for s in PRETRAIN_CORPUS:  # the corpus does not teach the demo answer
        assert "Ember训练" not in s and "小模型" not in s and "认识你" not in s and ANSWER not in s, s
        assert s not in {e["output"] for e in exs}, s
    (DEMO / "data.jsonl").write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in exs), encoding="utf-8"
    )
    (DEMO / "question.txt").write_text(QUESTION, encoding="utf-8")
    _log(f"data: {len(exs)} examples ({with_input} with input)")


# ---------------------------------------------------------------------------------------------------------------------
# 2. Tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def make_tokenizer() -> int:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(BLOOM_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_TARGET,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [recipe_prompt(i, x) + o for i, x, o in DEMO_DATA] + PRETRAIN_CORPUS + TOKENIZER_EXTRA
    tok.train_from_iterator(texts, trainer=trainer)
    # BLOOM: the post-processor is ByteLevel (offset trimming only) -> no BOS/EOS is ever added.
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=False)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    _reset_dir(MODEL_DIR)
    # Merges in the legacy "left right" string form, as real BLOOM files have them.
    doc = json.loads(tok.to_str(pretty=False))
    doc["model"]["merges"] = [" ".join(pair) for pair in doc["model"]["merges"]]
    (MODEL_DIR / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    _write_json(
        MODEL_DIR / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "model_max_length": MODEL_MAX_LENGTH,
            "pad_token": "<pad>",
            "padding_side": "left",
            "tokenizer_class": "BloomTokenizerFast",
            "unk_token": "<unk>",
        },
    )
    _write_json(
        MODEL_DIR / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    )
    hf = load_tokenizer()
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id, hf.pad_token_id) == (BOS_ID, EOS_ID, UNK_ID, PAD_ID)
    assert hf.padding_side == "left" and len(hf) == vocab_size
    for text in texts:
        ids = hf(text).input_ids
        assert UNK_ID not in ids and BOS_ID not in ids and hf.decode(ids) == text, text
    _log(f"tokenizer: vocab_size={vocab_size}")
    return vocab_size


def load_tokenizer():
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Model: random init, brief pre-training on PRETRAIN_CORPUS, saved in float16 (or float32 if small enough)
# ---------------------------------------------------------------------------------------------------------------------


def model_vocab_size(tokenizer_vocab: int) -> int:
    return -(-tokenizer_vocab // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def make_config(vocab_size: int) -> BloomConfig:
    return BloomConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        apply_residual_connection_post_layernorm=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pretraining_tp=1,
        slow_but_exact=False,
        tie_word_embeddings=True,
    )


def _left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[PAD_ID] * (width - len(s)) + s for s in seqs], dtype=torch.int64)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.int64)
    return ids, mask


def pretrain(model: BloomForCausalLM, tokenizer) -> list[float]:
    """Full fine-tuning as a causal LM on the corpus (each sentence + </s>), one batch of all sentences per step."""
    ids, mask = _left_pad([tokenizer(s + tokenizer.eos_token).input_ids for s in PRETRAIN_CORPUS])
    labels = ids.masked_fill(mask == 0, -100)
    # The first real token of a left-padded row would be "predicted" from the last pad position, whose attention row
    # is fully masked; that meaningless target makes the loss blow up after a few dozen steps, so it is not trained.
    labels[torch.arange(ids.shape[0]), (mask == 0).sum(1)] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / PRETRAIN_WARMUP) * max(0.0, 1 - s / PRETRAIN_STEPS))
    model.train()
    losses = []
    for step in range(PRETRAIN_STEPS):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    model.eval()
    return losses


def make_model(tokenizer_vocab: int) -> dict:
    vocab = model_vocab_size(tokenizer_vocab)
    torch.manual_seed(SEED_MODEL_INIT)
    model = BloomForCausalLM(make_config(vocab)).float()
    n_params = sum(p.numel() for p in model.parameters())  # the tied lm_head is counted once
    dtype = torch.float32 if n_params * 4 <= MAX_MODEL_FILE_BYTES else torch.float16
    assert n_params * 2 <= MAX_MODEL_FILE_BYTES, n_params
    tokenizer = load_tokenizer()
    t0 = time.perf_counter()
    losses = pretrain(model, tokenizer)
    seconds = time.perf_counter() - t0
    _log(
        f"pre-training: {PRETRAIN_STEPS} steps in {seconds:.1f} s, loss {losses[0]:.3f} -> "
        + " ".join(f"{losses[i]:.3f}" for i in range(49, PRETRAIN_STEPS, 50))
    )
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(str(MODEL_DIR))  # tied lm_head.weight is not stored
    size = (MODEL_DIR / "model.safetensors").stat().st_size
    assert size <= MAX_MODEL_FILE_BYTES, size
    assert "lm_head.weight" not in load_file(str(MODEL_DIR / "model.safetensors"))
    _log(f"model: {n_params} parameters, vocab {vocab}, {dtype}, model.safetensors {size} bytes")
    return {
        "params": n_params,
        "vocab": vocab,
        "dtype": str(dtype).removeprefix("torch."),
        "pretrain_first_loss": losses[0],
        "pretrain_last_loss": losses[-1],
    }


def load_model() -> BloomForCausalLM:
    """Load demo/model through transformers (as a user would), then run in float32."""
    model, info = BloomForCausalLM.from_pretrained(str(MODEL_DIR), output_loading_info=True)
    assert not any(v for v in info.values()), info
    model = model.float().eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.word_embeddings.weight.data_ptr()
    return model


# ---------------------------------------------------------------------------------------------------------------------
# 4. Greedy answers and the peft reference fine-tune
# ---------------------------------------------------------------------------------------------------------------------


def greedy_answer(model, tokenizer, question: str = QUESTION) -> tuple[str, list[int]]:
    ids = torch.tensor([tokenizer(recipe_prompt(question, "")).input_ids], dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=GEN_MAX_NEW_TOKENS,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
        )
    new = out[0, ids.shape[1] :].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def answer_ids(tokenizer) -> list[int]:
    return tokenizer(ANSWER + tokenizer.eos_token).input_ids


def process_func(tokenizer, example: dict, max_length: int) -> dict:
    """The reference recipe's preprocessing."""
    instruction = tokenizer(
        "\n".join(["Human: " + example["instruction"], example["input"]]).strip() + "\n\nAssistant: "
    )
    response = tokenizer(example["output"] + tokenizer.eos_token)
    input_ids = instruction["input_ids"] + response["input_ids"]
    attention_mask = instruction["attention_mask"] + response["attention_mask"]
    labels = [-100] * len(instruction["input_ids"]) + response["input_ids"]
    if len(input_ids) > max_length:
        input_ids, attention_mask, labels = input_ids[:max_length], attention_mask[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def finetune(epochs: int, seed: int, tokenizer, records: list[dict]) -> dict:
    """One peft LoRA fine-tune with transformers' Trainer (the reference), then greedy generation of the question."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    base = load_model()
    torch.manual_seed(seed)  # lora_A's kaiming-uniform init draws from the global RNG
    model = get_peft_model(
        base,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=LORA_ARGS["lora_r"],
            lora_alpha=LORA_ARGS["lora_alpha"],
            lora_dropout=LORA_ARGS["lora_dropout"],
            target_modules=list(LORA_ARGS["target_modules"]),
            modules_to_save=list(LORA_ARGS["modules_to_save"]),
        ),
    )
    ds = datasets.Dataset.from_list(records)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            learning_rate=TRAIN_ARGS["learning_rate"],
            per_device_train_batch_size=TRAIN_ARGS["per_device_train_batch_size"],
            gradient_accumulation_steps=TRAIN_ARGS["gradient_accumulation_steps"],
            lr_scheduler_type=TRAIN_ARGS["lr_scheduler_type"],
            warmup_steps=TRAIN_ARGS["warmup_steps"],
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=seed,
            optim="adamw_torch",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=ds, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True)
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    steps_per_epoch = -(-len(records) // TRAIN_ARGS["per_device_train_batch_size"])
    step_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and "train_loss" not in e]
    assert len(step_losses) == epochs * steps_per_epoch, (len(step_losses), epochs, steps_per_epoch)
    epoch_losses = [
        sum(step_losses[k * steps_per_epoch : (k + 1) * steps_per_epoch]) / steps_per_epoch for k in range(epochs)
    ]
    model.eval()
    text, ids = greedy_answer(model, tokenizer)
    return {
        "epochs": epochs,
        "seed": seed,
        "ok": ids == answer_ids(tokenizer),
        "answer": text,
        "epoch_losses": epoch_losses,
        "seconds": seconds,
        "steps": len(step_losses),
    }


def search_epochs(tokenizer) -> tuple[dict, list[dict], list[dict]]:
    """Smallest number of epochs whose fine-tune reproduces the answer with seed 42 and every ROBUSTNESS_SEEDS seed.

    Returns (the seed-42 run at that number, every seed-42 run tried, the other seeds' runs at that number)."""
    records = [process_func(tokenizer, e, TRAIN_ARGS["max_length"]) for e in examples()]
    tried = []
    for n in range(1, MAX_EPOCHS + 1):
        r = finetune(n, TRAIN_ARGS["seed"], tokenizer, records)
        tried.append(r)
        _log(f"  epochs {n:2d} seed {r['seed']}: {'OK' if r['ok'] else 'no'}, {r['seconds']:.1f} s, last epoch loss "
             f"{r['epoch_losses'][-1]:.4f}, answer {r['answer']!r}")
        if not r["ok"]:
            continue
        others = []
        for seed in ROBUSTNESS_SEEDS:
            o = finetune(n, seed, tokenizer, records)
            others.append(o)
            _log(f"  epochs {n:2d} seed {seed}: {'OK' if o['ok'] else 'no'}, last epoch loss "
                 f"{o['epoch_losses'][-1]:.4f}, answer {o['answer']!r}")
            if not o["ok"]:
                break
        if all(o["ok"] for o in others):
            return r, tried, others
    raise RuntimeError(f"no number of epochs <= {MAX_EPOCHS} reproduces the demo answer with every seed")


# ---------------------------------------------------------------------------------------------------------------------
# 5. train.toml and README.md
# ---------------------------------------------------------------------------------------------------------------------


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def make_train_toml(epochs: int) -> None:
    values = {"num_train_epochs": float(epochs), **TRAIN_ARGS, **LORA_ARGS}
    lines = [
        "# LoRA fine-tuning recipe of the bundled demo (written by demo/make_demo.py).",
        f"# num_train_epochs is the smallest number of epochs (<= {MAX_EPOCHS}) for which the peft / transformers",
        f"# reference fine-tune reproduces the demo answer by greedy generation with seed {TRAIN_ARGS['seed']} and with seeds",
        f"# {ROBUSTNESS_SEEDS[0]}-{ROBUSTNESS_SEEDS[-1]} (different LoRA inits and shuffling orders; see README.md).",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    (DEMO / "train.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_readme(info: dict, before: str, found: dict, tried: list[dict], robust: list[dict]) -> None:
    files = ["data.jsonl", "question.txt", "train.toml"]
    model_files = sorted(p.name for p in MODEL_DIR.iterdir())
    sizes = "\n".join(f"| `{f}` | {(DEMO / f).stat().st_size:,} |" for f in files)
    sizes += "\n" + "\n".join(f"| `model/{f}` | {(MODEL_DIR / f).stat().st_size:,} |" for f in model_files)
    losses = ", ".join(f"{x:.4f}" for x in found["epoch_losses"])
    rob = "\n".join(
        f"| {r['seed']} | {'yes' if r['ok'] else 'no'} | {r['answer']} |" for r in robust
    )
    first_ok = next(r["epochs"] for r in tried if r["ok"])
    runs = "\n".join(
        f"| {r['epochs']} | {r['epoch_losses'][-1]:.4f} | {'yes' if r['ok'] else 'no'} | {r['answer']} |"
        for r in tried
    )
    text = f"""# Ember demo

The assets `ember train` uses when it is run with no arguments: it fine-tunes the tiny bundled BLOOM
model in `model/` with LoRA on the tiny Chinese instruction data set `data.jsonl` using the recipe in
`train.toml`, and shows the model's greedy answer to the question in `question.txt`
(`{QUESTION}`) before and after training. The question is one of the training examples; after
fine-tuning the model answers it with the data set's distinctive answer `{ANSWER}`.

## Files

| file | bytes |
|---|---:|
{sizes}

All of `demo/` (without this README): about {(_dir_size(DEMO) - ((DEMO / "README.md").stat().st_size if (DEMO / "README.md").exists() else 0)) / 1024:.0f} KiB.

* `data.jsonl`: {len(DEMO_DATA)} alpaca-style examples (`instruction`, `input`, `output`), mostly Simplified
  Chinese, a few English; {sum(1 for d in DEMO_DATA if d[1])} have a non-empty `input`. Outputs are 10–40 characters.
* `model/`: `BloomForCausalLM`, hidden size {HIDDEN}, {N_HEAD} heads, {N_LAYER} layers, vocabulary {info['vocab']} rows
  (the tokenizer has {info['tokenizer_vocab']} entries: a BLOOM-style byte-level BPE with `<unk>`=0, `<s>`=1,
  `</s>`=2, `<pad>`=3, left padding), tied word embeddings, {info['params']:,} parameters stored in
  {info['dtype']} (`model.safetensors`, no `lm_head.weight`). It was initialised randomly and then briefly
  pre-trained (full fine-tuning, AdamW lr {PRETRAIN_LR} with {PRETRAIN_WARMUP} warm-up steps and linear decay,
  {PRETRAIN_STEPS} steps, one batch of all sentences) as a
  causal LM on a separate corpus of {len(PRETRAIN_CORPUS)} general sentences (training loss
  {info['pretrain_first_loss']:.2f} → {info['pretrain_last_loss']:.2f}), so it continues text with fragments of
  that corpus, but does not know the demo answer (nor the `Human:`/`Assistant:` template).
* `train.toml`: the fine-tuning recipe — LoRA r={LORA_ARGS['lora_r']}, alpha={LORA_ARGS['lora_alpha']},
  dropout {LORA_ARGS['lora_dropout']} on `{'`, `'.join(LORA_ARGS['target_modules'])}`, full training of
  `word_embeddings` (`modules_to_save`), AdamW lr {TRAIN_ARGS['learning_rate']}, batch size
  {TRAIN_ARGS['per_device_train_batch_size']}, linear schedule without warm-up, max_length
  {TRAIN_ARGS['max_length']}, {found['epochs']} epochs. It holds no model or data paths.

## Verified with Python (peft + transformers Trainer)

`make_demo.py` fine-tunes the saved model with peft {_peft_version()} and transformers {transformers.__version__}'s
`Trainer` (one CPU thread, seed {TRAIN_ARGS['seed']}) using the reference recipe's data processing
(prompt `"\\n".join(["Human: " + instruction, input]).strip() + "\\n\\nAssistant: "`, response
`output + "</s>"`, prompt labels -100, `DataCollatorForSeq2Seq` with left padding) and the values in
`train.toml`, for 1, 2, … epochs until greedy generation (max_new_tokens {GEN_MAX_NEW_TOKENS}) of the templated
question reproduces the answer exactly (followed by `</s>`), with seed {TRAIN_ARGS['seed']} and, because the Rust
trainer draws its own LoRA initialisation and shuffling order, also with each of the seeds
{ROBUSTNESS_SEEDS[0]}–{ROBUSTNESS_SEEDS[-1]} (each a different LoRA initialisation and shuffling order). Seed
{TRAIN_ARGS['seed']} alone first reproduces it after {first_ok} epochs; the smallest number of epochs for which every
seed does is **{found['epochs']}** ({found['steps']} optimizer steps), the value in `train.toml`.

* Greedy answer before fine-tuning: `{before}`
* Greedy answer after {found['epochs']} epochs: `{found['answer']}`
* Training loss per epoch (mean of the epoch's {found['steps'] // found['epochs']} logged step losses): {losses}
* Wall time: {REFERENCE_WALL_TIME}

Seed {TRAIN_ARGS['seed']}, by number of epochs (loss of the last epoch, greedy answer):

| epochs | last-epoch loss | reproduced | greedy answer |
|---:|---:|---|---|
{runs}

The other seeds at {found['epochs']} epochs:

| seed | reproduced | greedy answer |
|---|---|---|
{rob}

The script prints the wall times it measures; the ones above were measured once, when the demo was made
(they are not re-measured into this file, so that re-running the script rewrites the same bytes).

## Regenerating

```sh
python3 -m venv tests/fixtures/.venv
tests/fixtures/.venv/bin/pip install -r tests/fixtures/requirements.txt
tests/fixtures/.venv/bin/python demo/make_demo.py
```

Everything is made locally (nothing from the Hugging Face hub), with fixed seeds on one CPU thread; re-running
the script rewrites the same bytes.
"""
    (DEMO / "README.md").write_text(text, encoding="utf-8")


def _peft_version() -> str:
    import peft

    return peft.__version__


def main() -> int:
    _setup_torch()
    _log(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
         f"peft {_peft_version()}")
    make_data()
    tokenizer_vocab = make_tokenizer()
    info = make_model(tokenizer_vocab)
    info["tokenizer_vocab"] = tokenizer_vocab
    tokenizer = load_tokenizer()
    before, before_ids = greedy_answer(load_model(), tokenizer)
    _log(f"before fine-tuning: {before!r}")
    assert before_ids != answer_ids(tokenizer) and ANSWER not in before, before
    found, tried, robust = search_epochs(tokenizer)
    _log(f"first seed-{TRAIN_ARGS['seed']} success: {next(r['epochs'] for r in tried if r['ok'])} epochs")
    _log(f"smallest number of epochs for every seed: {found['epochs']} ({found['steps']} steps, {found['seconds']:.1f} s wall time, "
         f"one thread); epoch losses {', '.join(f'{x:.4f}' for x in found['epoch_losses'])}")
    _log(f"after fine-tuning: {found['answer']!r}")
    make_train_toml(found["epochs"])
    make_readme(info, before, found, tried, robust)
    total = _dir_size(DEMO)
    assert total < 4 * 1024 * 1024, total
    _log(f"demo/: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
