"""A Spanish news-summarisation data set that the package generates itself, for the CPU demo.

Each article is a few sentences about one event (who, did what, where, when, with what figure),
padded with background sentences drawn from the same word lists; its summary is one headline
that restates the event's key facts. A tiny model learns to pick those facts out of the article
in a few hundred steps, so the demo shows a large ROUGE gain on a 2-core CPU. Rows use MLSUM's
schema (text, summary, topic, url, title, date) so the demo runs through the real `mlsum` task.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

CITIES = ["Madrid", "Sevilla", "Valencia", "Bilbao", "Zaragoza", "Málaga", "Granada", "Córdoba",
          "Salamanca", "Oviedo", "Santander", "Alicante", "Murcia", "Toledo", "Cádiz", "Vigo",
          "Pamplona", "Logroño", "Cáceres", "Almería"]
SUBJECTS = [
    ("el ayuntamiento", "El ayuntamiento"), ("la universidad", "La universidad"),
    ("el gobierno regional", "El gobierno regional"), ("la policía", "La policía"),
    ("el hospital", "El hospital"), ("la orquesta", "La orquesta"),
    ("el club de fútbol", "El club de fútbol"), ("la cooperativa agrícola", "La cooperativa agrícola"),
    ("el museo", "El museo"), ("la asociación de vecinos", "La asociación de vecinos"),
]
EVENTS = [  # (verb in past tense, object, noun phrase for the headline)
    ("inauguró", "un nuevo puente peatonal", "inaugura un puente peatonal"),
    ("presentó", "un plan de movilidad sostenible", "presenta un plan de movilidad"),
    ("abrió", "una biblioteca infantil", "abre una biblioteca infantil"),
    ("anunció", "la contratación de cien médicos", "anuncia cien nuevos médicos"),
    ("celebró", "un concierto benéfico", "celebra un concierto benéfico"),
    ("recuperó", "un cuadro robado del siglo XVII", "recupera un cuadro robado"),
    ("organizó", "una feria de la cerveza artesana", "organiza una feria de cerveza"),
    ("firmó", "un acuerdo con la empresa pública", "firma un acuerdo con la empresa pública"),
    ("cerró", "la temporada con una gran fiesta", "cierra la temporada con una fiesta"),
    ("plantó", "dos mil árboles en el parque", "planta dos mil árboles"),
    ("ganó", "el campeonato nacional", "gana el campeonato nacional"),
    ("restauró", "la muralla medieval", "restaura la muralla medieval"),
]
DAYS = ["el lunes", "el martes", "el miércoles", "el jueves", "el viernes", "el sábado",
        "el domingo"]
FIGURES = ["tres millones de euros", "quinientos mil euros", "doce millones de euros",
           "ochocientos mil euros", "un millón de euros", "dos millones de euros"]
BACKGROUND = [
    "Según fuentes municipales, la iniciativa lleva meses en preparación.",
    "Los vecinos acudieron en gran número pese a la lluvia.",
    "La oposición pidió más información sobre los plazos.",
    "El acto contó con la presencia de varias autoridades locales.",
    "Los organizadores esperan repetir la experiencia el próximo año.",
    "Varios colectivos habían reclamado esta medida desde hace tiempo.",
    "La prensa local siguió el acontecimiento durante toda la mañana.",
    "Los comerciantes de la zona valoraron positivamente la noticia.",
    "El tráfico estuvo cortado durante algunas horas en el centro.",
    "Las redes sociales se llenaron de mensajes de apoyo.",
]
TOPICS = ["sociedad", "cultura", "deportes", "política", "economía"]


def make_article(rng: random.Random, index: int) -> dict:
    city = rng.choice(CITIES)
    subject, subject_title = rng.choice(SUBJECTS)
    verb, obj, headline = rng.choice(EVENTS)
    day, figure = rng.choice(DAYS), rng.choice(FIGURES)
    core = [f"{subject_title[0].upper() + subject_title[1:]} de {city} {verb} {day} {obj}.",
            f"El proyecto ha costado {figure}, según la nota difundida por {subject}.",
            f"Es la primera vez que {subject} de {city} {verb} {obj} en la última década."]
    background = rng.sample(BACKGROUND, k=rng.randint(1, 2))
    sentences = [core[0]] + background[:1] + core[1:] + background[1:]
    summary = f"{subject_title} de {city} {headline} por {figure}."
    return {"text": " ".join(sentences), "summary": summary, "topic": rng.choice(TOPICS),
            "url": f"https://demo.seq2seq-es.invalid/noticia/{index}",
            "title": f"{city}: {headline}", "date": f"2026-01-{1 + index % 28:02d}"}


def write_demo_dataset(folder: str | Path, *, train_size: int = 2000, validation_size: int = 64,
                       seed: int = 1234) -> dict[str, str]:
    """Write train/validation/test jsonl files in MLSUM's schema; return their paths.

    A file that already holds the same rows is left as it is, and a new one replaces it whole:
    a second `demo` on a folder where one trains rewrote the files in place before the run
    folder's lock refused it, and the training one could read a half-written file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sizes = {"train": train_size, "validation": validation_size, "test": validation_size}
    files, index = {}, 0
    for split, size in sizes.items():
        path = folder / f"{split}.jsonl"
        rows = []
        for _ in range(size):
            rows.append(json.dumps(make_article(rng, index), ensure_ascii=False) + "\n")
            index += 1
        text = "".join(rows).encode("utf-8")
        if not path.is_file() or path.read_bytes() != text:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(text)
            tmp.replace(path)
        files[split] = str(path)
    return files
