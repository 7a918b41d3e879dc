#!/usr/bin/env python3
"""Generate the bundled sample corpus that mimics MLCommons' Unsupervised People's Speech.

The real dataset (``MLCommons/unsupervised_peoples_speech`` on Hugging Face) is gated and
weighs hundreds of terabytes, so tests and tutorials of ``ups`` run on this small stand-in.
It reproduces the real layout byte for byte where that matters to a reader:

* ``audio/NNNNNN.tar`` for tar numbers <= 5000 and ``audio2/NNNNNN.tar`` above 5000;
  members are raw MP3 files named ``<item>/<file>.mp3``;
* ``vad_results.jsonl``: one single-key object per line, key = member path without
  ``.mp3``, start/end in 16 kHz samples, produced by running the real Silero VAD model on
  the *decoded* MP3 (what users will decode), shuffled, written with ``ensure_ascii=True``;
* ``lang_id_results.jsonl``: ``{"tar_number", "filepath": "/data/<item>/<file>.mp3",
  "prediction"}`` with Whisper language codes plus ``nospeech``.

The speech is synthesised with espeak-ng from a small text bank written for this script
(own sentences, no third-party text), so the corpus is free to redistribute. A handful of
awkward cases seen (or expected) in the real data are planted on purpose and listed in
``MANIFEST.json`` under ``edge_cases`` so that tests can check a pipeline handles them.

Determinism: every random choice comes from ``numpy.random.default_rng(seed)``-derived
generators keyed by file index; tars are written with sorted members and fixed metadata.
Running twice with the same seed and the same tool versions (espeak-ng, libsndfile/LAME,
silero-vad, torch), which are recorded in the manifest, gives byte-identical output.

Usage::

    python scripts/make_sample_corpus.py --out sample --seed 0

Needs: espeak-ng on PATH, numpy, soundfile (libsndfile >= 1.1 for MP3), soxr, torch and the
``silero-vad`` wheel (installed with ``--no-deps``; torchaudio is never imported).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

GENERATOR_VERSION = "1.0.0"
VAD_RATE = 16000  # Silero VAD (and the real vad_results.jsonl) count samples at 16 kHz.
TARGET_KBPS = 32  # low constant bitrate keeps the whole corpus well under 14 MB.
SYNTH_RATE = 22050  # espeak-ng's native output rate.

# --------------------------------------------------------------------------------------
# Text bank: a few short sentences per language, written for this corpus (public domain).
# Keys are Whisper language codes; ``voice`` is the espeak-ng voice that reads them.
# --------------------------------------------------------------------------------------
LANGUAGES: dict[str, dict] = {
    "en": {"voice": "en-us", "sentences": [
        "Good evening, and welcome to the community radio hour.",
        "Today we talk about the river, the bridge and the old mill.",
        "The weather will be cold in the morning and warm after noon.",
        "Please remember to bring your books to the library on Friday.",
        "Our guest has lived in this town for forty two years.",
        "Thank you for listening, and see you next week.",
    ]},
    "es": {"voice": "es", "sentences": [
        "Buenas tardes y bienvenidos al programa de hoy.",
        "La plaza del pueblo se llena de gente los domingos.",
        "Mañana lloverá en el norte y hará sol en el sur.",
        "Mi abuela cocinaba pan en un horno de leña.",
        "El concierto empieza a las nueve de la noche.",
        "Gracias por escucharnos, hasta la próxima semana.",
    ]},
    "fr": {"voice": "fr-fr", "sentences": [
        "Bonsoir à tous et bienvenue dans notre émission.",
        "Le marché du samedi ouvre très tôt le matin.",
        "Nous parlons aujourd'hui de la mer et des pêcheurs.",
        "La bibliothèque municipale prête aussi des disques.",
        "Il fera beau demain sur toute la côte.",
        "Merci de votre écoute et à la semaine prochaine.",
    ]},
    "de": {"voice": "de", "sentences": [
        "Guten Abend und herzlich willkommen zu unserer Sendung.",
        "Das alte Rathaus wurde im Jahr achtzehnhundert gebaut.",
        "Morgen wird es im Süden regnen und im Norden schneien.",
        "Die Kinder spielen nach der Schule im Park.",
        "Unser Gast erzählt von seiner Reise durch die Berge.",
        "Vielen Dank fürs Zuhören und bis zur nächsten Woche.",
    ]},
    "pt": {"voice": "pt-br", "sentences": [
        "Boa noite e bem-vindos ao nosso programa.",
        "A feira da cidade abre todas as quartas-feiras.",
        "Amanhã o tempo fica nublado com chuva à tarde.",
        "O pescador saiu cedo e voltou com o barco cheio.",
        "A escola vai organizar uma festa no fim do mês.",
        "Obrigado pela companhia e até a próxima.",
    ]},
    "hi": {"voice": "hi", "sentences": [
        "नमस्ते, आज के कार्यक्रम में आपका स्वागत है।",
        "गाँव के पास एक पुराना मंदिर और एक बड़ा तालाब है।",
        "कल सुबह बारिश होगी और शाम को धूप निकलेगी।",
        "बच्चे स्कूल के बाद मैदान में खेलते हैं।",
        "हमारे मेहमान एक किसान हैं जो चावल उगाते हैं।",
        "सुनने के लिए धन्यवाद, फिर मिलेंगे।",
    ]},
    "sw": {"voice": "sw", "sentences": [
        "Habari za jioni na karibu kwenye kipindi chetu.",
        "Soko la mji hufunguliwa mapema kila Jumamosi.",
        "Kesho kutakuwa na mvua nyingi katika pwani.",
        "Watoto wanacheza mpira baada ya shule.",
        "Mgeni wetu ni mwalimu kutoka kijiji cha milimani.",
        "Asante kwa kusikiliza, tukutane wiki ijayo.",
    ]},
    "ta": {"voice": "ta", "sentences": [
        "வணக்கம், இன்றைய நிகழ்ச்சிக்கு உங்களை வரவேற்கிறோம்.",
        "எங்கள் ஊரில் ஒரு பழைய கோவில் இருக்கிறது.",
        "நாளை காலை மழை பெய்யும் என்று எதிர்பார்க்கப்படுகிறது.",
        "குழந்தைகள் பள்ளிக்குப் பிறகு விளையாடுகிறார்கள்.",
        "எங்கள் விருந்தினர் ஒரு விவசாயி.",
        "கேட்டதற்கு நன்றி, அடுத்த வாரம் சந்திப்போம்.",
    ]},
    "cy": {"voice": "cy", "sentences": [
        "Noswaith dda a chroeso i'r rhaglen heno.",
        "Mae'r capel bach ar ben y bryn yn hen iawn.",
        "Bydd hi'n bwrw glaw yfory yn y gogledd.",
        "Mae'r plant yn chwarae yn y parc ar ôl ysgol.",
        "Mae ein gwestai yn ffermwr o'r cwm.",
        "Diolch am wrando, welwn ni chi wythnos nesaf.",
    ]},
    "eu": {"voice": "eu", "sentences": [
        "Arratsalde on eta ongi etorri gure saiora.",
        "Herriko azoka larunbatero irekitzen da goizean.",
        "Bihar euria egingo du kostaldean.",
        "Haurrak parkean jolasten dira eskolaren ondoren.",
        "Gure gonbidatua arrantzalea da.",
        "Eskerrik asko entzuteagatik, datorren astera arte.",
    ]},
    "is": {"voice": "is", "sentences": [
        "Góða kvöldið og velkomin í þáttinn okkar.",
        "Gamla kirkjan stendur við fjörðinn.",
        "Á morgun verður rigning og hvasst fyrir norðan.",
        "Börnin leika sér í garðinum eftir skóla.",
        "Gesturinn okkar er sjómaður frá Vestfjörðum.",
        "Takk fyrir að hlusta og sjáumst í næstu viku.",
    ]},
    "mt": {"voice": "mt", "sentences": [
        "Il-lejl it-tajjeb u merħba għall-programm tagħna.",
        "Is-suq tal-belt jiftaħ kull nhar ta' Sibt.",
        "Għada se tagħmel ix-xita fuq il-gżira.",
        "It-tfal jilagħbu fil-ġnien wara l-iskola.",
        "Il-mistieden tagħna huwa sajjied minn Marsaxlokk.",
        "Grazzi talli smajtu, narawkom il-ġimgħa d-dieħla.",
    ]},
    "vi": {"voice": "vi", "sentences": [
        "Xin chào và chào mừng quý vị đến với chương trình.",
        "Chợ của làng mở cửa vào mỗi buổi sáng.",
        "Ngày mai trời sẽ mưa ở miền bắc.",
        "Trẻ em chơi ở công viên sau giờ học.",
        "Khách mời của chúng tôi là một người nông dân.",
        "Cảm ơn quý vị đã lắng nghe, hẹn gặp lại tuần sau.",
    ]},
    "haw": {"voice": "haw", "sentences": [
        "Aloha kākou a komo mai i kā mākou papahana.",
        "Nani ke kai i kēia kakahiaka.",
        "E hele ana nā keiki i ke kula i ka lā ʻapōpō.",
        "Mahalo nui iā ʻoukou no ka hoʻolohe ʻana.",
    ]},
}

VOICE_VARIANTS = ["", "+f1", "+f2", "+f3", "+f4", "+m1", "+m2", "+m3", "+m4", "+m7"]


@dataclass
class FileSpec:
    """One planned corpus file: where it lives and what it should sound like."""

    tar: str
    member: str  # "<item>/<file>.mp3", NFC
    kind: str  # "speech" or "tone" / "chirp" / "noise" (the last three are nospeech)
    lang: str | None  # Whisper code of the true language, None for nospeech
    seconds: float  # target length before encoding
    dense: bool = True  # dense: short pauses; sparse: long pauses (< 80 % speech per 10 s)
    rate: int = 44100
    channels: int = 1
    lid_label: str | None = None  # overrides the LID prediction (deliberate label error)
    vad_key_override: str | None = None  # e.g. a percent-encoded key
    corrupt: bool = False  # bytes in the tar are damaged after VAD ran on the good file
    in_tar: bool = True
    in_vad: bool = True
    in_lid: bool = True
    extra: dict = field(default_factory=dict)


def file_plan() -> list[FileSpec]:
    """Return the fixed list of files; edge cases are planted here by name, not at random."""
    S = FileSpec
    return [
        # ---- tar 000001 (audio/) ----
        S("000001", "radio.show.2011/ep.01.part.2.mp3", "speech", "en", 95),
        S("000001", "canción/café ñandú.mp3", "speech", "es", 80, dense=False),
        S("000001", "conference_talks_fr/session_3.mp3", "speech", "fr", 110, rate=48000, channels=2),
        S("000001", "dorfgeschichten/kapitel_07.mp3", "speech", "de", 70, dense=False),
        S("000001", "hindi_kahaniyan/kahani_02.mp3", "speech", "hi", 90, rate=16000),
        S("000001", "kiswahili_redio/habari.mp3", "speech", "sw", 60, dense=False),
        S("000001", "tone_tests/calibration_1khz.mp3", "tone", None, 30),
        S("000001", "old_tapes/tape_04_side_b.mp3", "speech", "en", 40, corrupt=True),
        S("000001", "tamil_podcast/pakuthi_1.mp3", "speech", "ta", 100, rate=24000),
        S("000001", "vietnam_radio/ban_tin.mp3", "speech", "vi", 75),
        S("000001", "hawaiian_chants/mele.mp3", "speech", "haw", 45, dense=False),
        # ---- tar 000002 (audio/) ----
        S("000002", "community_radio_a/track01.mp3", "speech", "en", 65),
        S("000002", "lecture_series_b/track01.mp3", "speech", "es", 85),
        S("000002", "podcast ep/Ölçü 2.mp3", "speech", "pt", 70,
          vad_key_override=urllib.parse.quote("podcast ep/Ölçü 2", safe="/")),
        S("000002", "welsh_sermons/pregeth_1901.mp3", "speech", "cy", 110),
        S("000002", "euskal_irratia/albisteak.mp3", "speech", "eu", 90, dense=False, channels=2),
        S("000002", "icelandic_sagas/saga.lestur.mp3", "speech", "is", 100),
        S("000002", "maltese_news/ahbarijiet.mp3", "speech", "mt", 80, rate=48000),
        S("000002", "field_recordings/wind_noise.mp3", "noise", None, 40),
        S("000002", "german_lessons/lektion_12.mp3", "speech", "de", 100),
        S("000002", "portuguese_radio/noticias.mp3", "speech", "pt", 95, dense=False, lid_label="es"),
        S("000002", "hindi_lectures/vyakhyan_5.mp3", "speech", "hi", 60),
        S("000002", "deleted_item/lost_recording.mp3", "speech", "en", 25, in_tar=False, in_lid=False),
        # ---- tar 005001 (audio2/) ----
        S("005001", "sweep_tests/chirp_20_8000.mp3", "chirp", None, 25),
        S("005001", "french_audiobooks/chapitre_1.mp3", "speech", "fr", 120),
        S("005001", "studio_outtakes/take_3.mp3", "speech", "en", 50, in_vad=False),
        S("005001", "swahili_stories/hadithi.mp3", "speech", "sw", 90, rate=16000),
        S("005001", "tamil_news/seithigal.mp3", "speech", "ta", 70, dense=False),
        S("005001", "vietnamese_lessons/bai_hoc_2.mp3", "speech", "vi", 110, channels=2),
        S("005001", "welsh_poetry/cerddi.mp3", "speech", "cy", 55, dense=False, lid_label="en"),
        S("005001", "basque_lessons/ikasgaia.mp3", "speech", "eu", 65, rate=24000),
        S("005001", "icelandic_radio/frettir.mp3", "speech", "is", 45),
        S("005001", "maltese_stories/stejjer.mp3", "speech", "mt", 100, lid_label="ar"),
        S("005001", "english_lectures/lecture_09.mp3", "speech", "en", 120),
        S("005001", "spanish_radio/programa_14.mp3", "speech", "es", 75, dense=False, rate=48000),
    ]


# Planted cases that depend on what the VAD returns are chosen by member name here.
PAST_END_MEMBER = "english_lectures/lecture_09.mp3"
PAST_END_EXTRA_SAMPLES = 12000  # the last segment is pushed 0.75 s past the end of the file
MALFORMED_VAD_LINE = '{"broken_item/half_written": {"tar_number": "0000'
MALFORMED_LID_LINE = '{"tar_number": "000002", "filepath": "/data/broken_item/half_wri'


# --------------------------------------------------------------------------------------
# Audio synthesis
# --------------------------------------------------------------------------------------
def espeak(text: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    """Synthesise one utterance with espeak-ng and return float32 mono at SYNTH_RATE."""
    wav = tmp / "utt.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                    "-w", str(wav), text], check=True, capture_output=True)
    data, sr = sf.read(wav, dtype="float32")
    if sr != SYNTH_RATE:
        data = soxr.resample(data, sr, SYNTH_RATE)
    return np.trim_zeros(data)


def speech_track(spec: FileSpec, rng: np.random.Generator, tmp: Path) -> np.ndarray:
    """Concatenate utterances and pauses until the target length is filled.

    Dense files use 0.2-0.8 s pauses; sparse ones 1.5-4 s so that most 10 s windows hold
    under 80 % speech. Each utterance gets its own voice variant, speed, pitch and gain so
    that a file sounds like several speakers, as in a radio programme.
    """
    lang = LANGUAGES[spec.lang]
    total = int(spec.seconds * SYNTH_RATE)
    pieces = [np.zeros(int(rng.uniform(0.2, 1.5) * SYNTH_RATE), np.float32)]
    length = len(pieces[0])
    sentences = lang["sentences"]
    while True:
        text = sentences[int(rng.integers(len(sentences)))]
        if rng.random() < 0.25:  # sometimes read a number too: espeak expands digits
            text = f"{text} {int(rng.integers(2, 2000))}."
        voice = lang["voice"] + VOICE_VARIANTS[int(rng.integers(len(VOICE_VARIANTS)))]
        utt = espeak(text, voice, int(rng.integers(120, 200)), int(rng.integers(25, 75)), tmp)
        utt = utt / (np.abs(utt).max() + 1e-9) * rng.uniform(0.4, 0.8)
        pause_s = rng.uniform(0.2, 0.8) if spec.dense else rng.uniform(1.5, 4.0)
        pause = np.zeros(int(pause_s * SYNTH_RATE), np.float32)
        if length + len(utt) + len(pause) > total:
            break
        pieces += [utt.astype(np.float32), pause]
        length += len(utt) + len(pause)
    pieces.append(np.zeros(total - length, np.float32))
    return np.concatenate(pieces)


def nospeech_track(spec: FileSpec, rng: np.random.Generator) -> np.ndarray:
    """Build a non-speech signal: a pulsed 1 kHz tone, a log chirp, or filtered noise."""
    n = int(spec.seconds * SYNTH_RATE)
    t = np.arange(n) / SYNTH_RATE
    if spec.kind == "tone":
        gate = (np.floor(t) % 2 == 0).astype(np.float32)  # 1 s on, 1 s off
        return (0.5 * np.sin(2 * np.pi * 1000 * t) * gate).astype(np.float32)
    if spec.kind == "chirp":
        f0, f1 = 20.0, 8000.0
        k = np.log(f1 / f0) / spec.seconds
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
        return (0.4 * np.sin(phase)).astype(np.float32)
    # "noise": brown-ish wind noise with slow amplitude swells
    white = rng.standard_normal(n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(2205) / 2205, mode="same")  # remove drift
    brown /= np.abs(brown).max() + 1e-9
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(5, 9))
    return (0.5 * brown * swell).astype(np.float32)


def finish_track(mono: np.ndarray, spec: FileSpec, rng: np.random.Generator) -> np.ndarray:
    """Add a low noise floor, resample to the file's rate and make stereo if asked."""
    mono = mono + rng.standard_normal(len(mono)).astype(np.float32) * 0.002
    out = soxr.resample(mono, SYNTH_RATE, spec.rate).astype(np.float32)
    if spec.channels == 2:
        delay = int(0.003 * spec.rate)  # 3 ms between channels, like a spaced pair of mics
        right = np.concatenate([np.zeros(delay, np.float32), out[:-delay]]) * 0.85
        right += rng.standard_normal(len(out)).astype(np.float32) * 0.002
        out = np.stack([out, right], axis=1)
    return np.clip(out, -0.99, 0.99)


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------
def compression_level(rate: int, kbps: int = TARGET_KBPS) -> float:
    """Map a wanted constant bitrate to libsndfile's 0..1 compression level.

    libsndfile spreads the level linearly over LAME's bitrate range: 32-320 kbps for
    MPEG-1 rates (32/44.1/48 kHz) and 8-160 kbps for MPEG-2 rates (16/22.05/24 kHz).
    """
    lo, hi = (32, 320) if rate >= 32000 else (8, 160)
    return min(0.99, max(0.0, (hi - kbps) / (hi - lo)))  # 1.0 is rejected by libsndfile


def encode_mp3(audio: np.ndarray, rate: int) -> bytes:
    """Encode with libsndfile's LAME at constant bitrate (deterministic, checked twice)."""
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="MP3", subtype="MPEG_LAYER_III",
             compression_level=compression_level(rate), bitrate_mode="CONSTANT")
    return buf.getvalue()


def decode(mp3: bytes) -> tuple[np.ndarray, int]:
    """Decode MP3 bytes as a user would (soundfile/mpg123), always 2-D (frames, channels)."""
    data, sr = sf.read(io.BytesIO(mp3), dtype="float32", always_2d=True)
    return data, sr


def corrupt_mp3(mp3: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite the head with garbage and truncate, so that decoding fails outright."""
    garbage = bytearray(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
    garbage[0] = 0x00  # never an MPEG sync byte (0xFF) nor an ID3 'I'
    bad = bytes(garbage) + mp3[512:2048]
    try:
        decode(bad)
    except Exception:
        return bad
    raise RuntimeError("corrupted MP3 still decodes; change corrupt_mp3")


# --------------------------------------------------------------------------------------
# VAD
# --------------------------------------------------------------------------------------
def load_vad():
    """Load Silero VAD's packaged TorchScript model (offline; no torchaudio import)."""
    import torch
    from silero_vad import load_silero_vad

    torch.set_num_threads(1)  # single thread: the same floats every run
    model = load_silero_vad()
    # torchaudio does not load with the project's torch; make sure nothing pulled it in.
    assert "torchaudio" not in sys.modules, "silero-vad imported torchaudio"
    return model


def run_vad(model, audio: np.ndarray, rate: int) -> tuple[list[dict], int]:
    """Mix to mono, resample to 16 kHz with soxr; return Silero's timestamps and length."""
    import torch
    from silero_vad import get_speech_timestamps

    mono = audio.mean(axis=1).astype(np.float32)
    wav16 = soxr.resample(mono, rate, VAD_RATE).astype(np.float32)
    stamps = get_speech_timestamps(torch.from_numpy(wav16), model, sampling_rate=VAD_RATE)
    return [{"start": int(s["start"]), "end": int(s["end"])} for s in stamps], len(wav16)


def min_window_speech(stamps: list[dict], n16: int, window_s: float = 10.0) -> float:
    """Lowest VAD speech fraction over 10 s windows (1 s hop): shows which files are sparse."""
    mask = np.zeros(n16, bool)
    for s in stamps:
        mask[s["start"]:s["end"]] = True
    win, hop = int(window_s * VAD_RATE), VAD_RATE
    if n16 <= win:
        return round(float(mask.mean()), 3)
    csum = np.concatenate([[0], np.cumsum(mask)])
    starts = np.arange(0, n16 - win + 1, hop)
    return round(float(((csum[starts + win] - csum[starts]) / win).min()), 3)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def tar_path(out: Path, tar: str) -> Path:
    """audio/ holds tars numbered <= 5000, audio2/ the rest, as in the real dataset."""
    return out / ("audio" if int(tar) <= 5000 else "audio2") / f"{tar}.tar"


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    """Write a byte-deterministic PAX tar: sorted names, mtime 0, root owner, no names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tf.addfile(info, io.BytesIO(members[name]))


def write_jsonl(path: Path, lines: list[str]) -> None:
    """Write lines with '\n' endings and no trailing extras."""
    path.write_text("".join(line + "\n" for line in lines), encoding="ascii")


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tool_versions() -> dict:
    """Versions that decide the exact bytes: record them so a mismatch is explainable."""
    import importlib.metadata as md

    espeak_v = subprocess.run(["espeak-ng", "--version"], capture_output=True,
                              text=True).stdout.split("Data at")[0].strip()
    return {"espeak-ng": espeak_v, "libsndfile": sf.__libsndfile_version__,
            "soundfile": md.version("soundfile"), "soxr": md.version("soxr"),
            "numpy": np.__version__, "torch": md.version("torch"),
            "silero-vad": md.version("silero-vad")}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def build(out: Path, seed: int) -> dict:
    """Synthesise, encode, run VAD, write tars/jsonl/manifest/README; return the manifest."""
    plan = file_plan()
    assert len({(s.member) for s in plan}) == len(plan), "member names must be unique"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = load_vad()
    tars: dict[str, dict[str, bytes]] = {}
    vad_lines: list[str] = []
    lid_lines: list[str] = []
    files = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for idx, spec in enumerate(plan):
            rng = np.random.default_rng([seed, idx])
            member = unicodedata.normalize("NFC", spec.member)
            key_plain = member[: -len(".mp3")]
            vad_key = spec.vad_key_override or key_plain
            mono = (speech_track(spec, rng, tmp) if spec.kind == "speech"
                    else nospeech_track(spec, rng))
            mp3 = encode_mp3(finish_track(mono, spec, rng), spec.rate)
            audio, rate = decode(mp3)
            assert rate == spec.rate, (member, rate)
            duration = len(audio) / rate
            stamps, n16 = run_vad(model, audio, rate)
            tar_bytes = corrupt_mp3(mp3, rng) if spec.corrupt else mp3
            if spec.in_tar:
                tars.setdefault(spec.tar, {})[member] = tar_bytes
            if member == PAST_END_MEMBER:
                stamps[-1]["end"] = n16 + PAST_END_EXTRA_SAMPLES
            if spec.in_vad:
                vad_lines.append(json.dumps({vad_key: {
                    "tar_number": spec.tar, "duration": round(n16 / VAD_RATE, 2),
                    "timestamps": stamps}}, ensure_ascii=True))
            truth = spec.lang or "nospeech"
            label = spec.lid_label or truth
            if spec.in_lid:
                lid_lines.append(json.dumps({"tar_number": spec.tar,
                                             "filepath": f"/data/{member}",
                                             "prediction": label}, ensure_ascii=True))
            speech_s = sum(s["end"] - s["start"] for s in stamps) / VAD_RATE
            files.append({
                "tar": spec.tar, "member": member, "in_tar": spec.in_tar,
                "vad_key": vad_key if spec.in_vad else None,
                "lid_filepath": f"/data/{member}" if spec.in_lid else None,
                "kind": "speech" if spec.kind == "speech" else "nospeech",
                "signal": spec.kind, "true_language": truth,
                "lid_label": label if spec.in_lid else None,
                "sample_rate": rate, "channels": audio.shape[1],
                "duration_s": round(duration, 4), "vad_speech_s": round(speech_s, 2),
                "vad_segments": len(stamps), "vad_samples_16k": n16, "dense": spec.dense,
                "min_speech_fraction_10s": min_window_speech(stamps, n16),
                "decodable": not spec.corrupt,
                "member_sha256": hashlib.sha256(tar_bytes).hexdigest() if spec.in_tar else None,
            })
            print(f"[{idx + 1:2d}/{len(plan)}] {member}: {duration:.1f}s {rate}Hz "
                  f"{audio.shape[1]}ch, VAD {speech_s:.1f}s in {len(stamps)} segments",
                  flush=True)

    order = np.random.default_rng([seed, 10_000])
    vad_lines = [vad_lines[i] for i in order.permutation(len(vad_lines))]
    lid_lines = [lid_lines[i] for i in order.permutation(len(lid_lines))]
    vad_lines.insert(len(vad_lines) // 2, MALFORMED_VAD_LINE)
    lid_lines.insert(len(lid_lines) // 2, MALFORMED_LID_LINE)

    for tar, members in sorted(tars.items()):
        write_tar(tar_path(out, tar), members)
    write_jsonl(out / "vad_results.jsonl", vad_lines)
    write_jsonl(out / "lang_id_results.jsonl", lid_lines)

    manifest = make_manifest(out, files, seed, vad_lines, lid_lines)
    (out / "README.md").write_text(readme(manifest), encoding="utf-8")
    manifest["output_sha256"]["README.md"] = sha256(out / "README.md")
    (out / "MANIFEST.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
        encoding="utf-8")
    return manifest


def by_member(files: list[dict], member: str) -> dict:
    """Find one manifest file record by member name."""
    return next(f for f in files if f["member"] == member)


def edge_cases(files: list[dict], vad_lines: list[str], lid_lines: list[str]) -> dict:
    """Name exactly which member/key carries each planted awkward case."""
    def ref(member: str) -> dict:
        f = by_member(files, member)
        return {"tar": f["tar"], "member": f["member"], "vad_key": f["vad_key"],
                "lid_filepath": f["lid_filepath"]}

    silent = [f for f in files if f["kind"] == "nospeech" and f["vad_segments"] == 0]
    assert silent, "expected at least one nospeech file with empty VAD timestamps"
    past = by_member(files, PAST_END_MEMBER)
    return {
        "dotted_names": ref("radio.show.2011/ep.01.part.2.mp3"),
        "same_basename_one_tar": [ref("community_radio_a/track01.mp3"),
                                  ref("lecture_series_b/track01.mp3")],
        "non_ascii_key": ref("canción/café ñandú.mp3"),
        "url_encoded_vad_key": ref("podcast ep/Ölçü 2.mp3"),
        "corrupt_mp3": ref("old_tapes/tape_04_side_b.mp3"),
        "in_tar_missing_from_vad": ref("studio_outtakes/take_3.mp3"),
        "vad_entry_not_in_any_tar": {"vad_key": "deleted_item/lost_recording",
                                     "tar_number_claimed": "000002"},
        "malformed_jsonl_lines": {
            "vad_results.jsonl": {"line_number": vad_lines.index(MALFORMED_VAD_LINE) + 1,
                                  "text": MALFORMED_VAD_LINE},
            "lang_id_results.jsonl": {"line_number": lid_lines.index(MALFORMED_LID_LINE) + 1,
                                      "text": MALFORMED_LID_LINE}},
        "vad_segment_past_end": {**ref(PAST_END_MEMBER),
                                 "duration_samples_16k": past["vad_samples_16k"],
                                 "last_end_sample": past["vad_samples_16k"]
                                 + PAST_END_EXTRA_SAMPLES,
                                 "extra_samples": PAST_END_EXTRA_SAMPLES},
        "empty_vad_timestamps": [ref(f["member"]) for f in silent],
        "nospeech_tone": ref("tone_tests/calibration_1khz.mp3"),
        "lid_label_errors": [{**ref(f["member"]), "true_language": f["true_language"],
                              "lid_label": f["lid_label"]}
                             for f in files if f["lid_label"] not in (None, f["true_language"])],
    }


def make_manifest(out: Path, files: list[dict], seed: int, vad_lines, lid_lines) -> dict:
    """Collect ground truth, edge cases and output hashes (README hash added by caller)."""
    in_tar = [f for f in files if f["in_tar"]]
    outputs = sorted(p for p in out.rglob("*") if p.is_file())
    return {
        "generator": "scripts/make_sample_corpus.py",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "tool_versions": tool_versions(),
        "mp3_bitrate_kbps": TARGET_KBPS,
        "totals": {
            "files_in_tars": len(in_tar),
            "audio_seconds_in_tars": round(sum(f["duration_s"] for f in in_tar), 2),
            "speech_languages": sorted({f["true_language"] for f in in_tar
                                        if f["kind"] == "speech"}),
            "tars": sorted({f["tar"] for f in in_tar}),
        },
        "files": files,
        "edge_cases": edge_cases(files, vad_lines, lid_lines),
        "output_sha256": {p.relative_to(out).as_posix(): sha256(p) for p in outputs},
    }


def readme(m: dict) -> str:
    """Human description of the corpus, generated so that it never drifts from the data."""
    t = m["totals"]
    e = m["edge_cases"]
    tv = m["tool_versions"]
    lines = [
        "# `ups` sample corpus",
        "",
        "A small, synthetic stand-in for MLCommons' Unsupervised People's Speech",
        "(`MLCommons/unsupervised_peoples_speech`) with the same layout and file schemas, for",
        "tests and tutorials. Generated by `scripts/make_sample_corpus.py`; committed so that",
        "users need neither espeak-ng nor the VAD model. `MANIFEST.json` holds the ground truth.",
        "",
        "## Contents",
        "",
        f"- {t['files_in_tars']} MP3 files, {t['audio_seconds_in_tars'] / 60:.1f} minutes, in tars "
        + ", ".join(f"`{tar_path(Path(''), x).as_posix()}`" for x in t["tars"]) + ".",
        f"- Speech in {len(t['speech_languages'])} languages (Whisper codes): "
        + ", ".join(t["speech_languages"]) + "; plus non-speech tone, chirp and noise files.",
        "- Mostly 44.1 kHz mono; some files at 16, 24 and 48 kHz, some stereo.",
        f"- MP3, constant {m['mp3_bitrate_kbps']} kbps, encoded by libsndfile (LAME).",
        "- `vad_results.jsonl`: Silero VAD (PyPI `silero-vad`, TorchScript model, default",
        "  parameters) run on the *decoded* MP3 mixed to mono and resampled to 16 kHz with soxr.",
        "  Keys are member paths without `.mp3`; `start`/`end` are 16 kHz sample indices.",
        "  Lines are shuffled and written with `ensure_ascii=True` (`\\u00f3` escapes).",
        "- `lang_id_results.jsonl`: the known language (Whisper code) or `nospeech`, with a",
        "  few deliberate label errors (see below).",
        "",
        "## Planted edge cases (see `MANIFEST.json` → `edge_cases`)",
        "",
        f"- Dotted names: `{e['dotted_names']['member']}`.",
        "- Same basename twice in one tar: "
        + " and ".join(f"`{x['member']}`" for x in e["same_basename_one_tar"])
        + " (different languages).",
        f"- Non-ASCII key: `{e['non_ascii_key']['member']}` (NFC; escaped in the jsonl files).",
        f"- URL-encoded VAD key: member `{e['url_encoded_vad_key']['member']}` has VAD key",
        f"  `{e['url_encoded_vad_key']['vad_key']}`; its LID filepath is not encoded.",
        "- Corrupt MP3 (garbage head, truncated; soundfile refuses it) that still has VAD and",
        f"  LID entries: `{e['corrupt_mp3']['member']}`.",
        f"- In a tar, with LID, but missing from VAD: `{e['in_tar_missing_from_vad']['member']}`.",
        f"- VAD entry for a file in no tar: `{e['vad_entry_not_in_any_tar']['vad_key']}`.",
        "- One truncated, malformed JSON line in the middle of each jsonl file (line "
        f"{e['malformed_jsonl_lines']['vad_results.jsonl']['line_number']} of the VAD file, line "
        f"{e['malformed_jsonl_lines']['lang_id_results.jsonl']['line_number']} of the LID file).",
        f"- A VAD segment ending {e['vad_segment_past_end']['extra_samples']} samples past the end"
        f" of `{e['vad_segment_past_end']['member']}` (edited after the VAD ran).",
        "- Empty VAD timestamps: "
        + ", ".join(f"`{x['member']}`" for x in e["empty_vad_timestamps"]) + ".",
        f"- A 1 kHz tone labelled `nospeech`: `{e['nospeech_tone']['member']}`.",
        "- LID label errors: " + "; ".join(
            f"`{x['member']}` is {x['true_language']}, labelled {x['lid_label']}"
            for x in e["lid_label_errors"]) + ".",
        "",
        "## How it was generated",
        "",
        "```sh",
        "apt-get update && apt-get install -y espeak-ng   # Debian: espeak-ng 1.51",
        "python3 -m venv /work/venv-corpus",
        "/work/venv-corpus/bin/pip install torch==2.13.0 numpy soundfile soxr onnxruntime",
        "/work/venv-corpus/bin/pip install --no-deps silero-vad   # no torchaudio",
        f"/work/venv-corpus/bin/python scripts/make_sample_corpus.py --out sample --seed {m['seed']}",
        "```",
        "",
        "Output is byte-identical across runs with the same seed and tool versions:",
        "",
        "```",
        *[f"{k}: {v}" for k, v in tv.items()],
        "```",
        "",
        "Another espeak-ng, LAME/libsndfile or Silero version changes the bytes (and the hashes in",
        "`MANIFEST.json`), not the layout or the edge cases. The corruption of the bad MP3 and",
        "the past-the-end VAD segment are applied after the VAD ran on the intact audio.",
        "",
        "Check the committed corpus against its manifest (stdlib, numpy, soundfile, pytest):",
        "",
        "```sh",
        "/work/venv-corpus/bin/python -m pytest tests/test_sample_corpus.py",
        "# a fresh regeneration elsewhere: UPS_SAMPLE_DIR=/tmp/sample python -m pytest ...",
        "```",
        "",
        "## License",
        "",
        "All speech is synthetic (espeak-ng, GPL-3.0 program; its output is not covered by the",
        "GPL) reading sentences written for this corpus; the non-speech signals are generated.",
        "The corpus is free to redistribute and use for any purpose. It contains no recordings",
        "from the real UPS dataset (whose audio is CC-BY / CC-BY-SA).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments and build the corpus."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("sample"), help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args()
    m = build(args.out, args.seed)
    t = m["totals"]
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out}: {t['files_in_tars']} files, "
          f"{t['audio_seconds_in_tars'] / 60:.1f} min, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
