"""The static tables of the business (address, staff, currencies...), drawn once from a seed."""

from __future__ import annotations

import random
import string

from faker import Faker

from totesys.business import new_design
from totesys.facts import (
    CURRENCY_CODES,
    DEPARTMENT_NAMES,
    DISPATCH_LOCATION,
    EMAIL_DOMAIN,
    INITIAL_DESIGNS,
    LEGAL_ADDRESSES,
    OFFICE_LOCATIONS,
    PAYMENT_TYPE_NAMES,
    SEED_MOMENT,
    SEED_MOMENT_PEOPLE,
    STATIC_COUNTS,
)


def static_tables(seed: int) -> dict[str, list[dict]]:
    """address, counterparty, currency, department, staff, payment_type and the first designs.

    Generated with Faker seeded by `seed` (so reproducible) and explicit ids from 1, in the
    shape section 2 of the reference describes (nullable columns NULL in the same share).
    """
    rng = random.Random(f"{seed}/static")  # nosec B311 # a seeded simulation must be reproducible
    fake = Faker("en_US")
    fake.seed_instance(seed)
    uk = Faker("en_GB")
    uk.seed_instance(seed)
    at, people_at = SEED_MOMENT, SEED_MOMENT_PEOPLE
    stamp = {"created_at": at, "last_updated": at}
    people_stamp = {"created_at": people_at, "last_updated": people_at}

    n_addresses = STATIC_COUNTS["address"]
    countries: list[str] = []
    while len(countries) < n_addresses - 1:  # 29 distinct countries, one of them twice
        country = fake.country()
        if country not in countries:
            countries.append(country)
    countries.append(rng.choice(countries))
    rng.shuffle(countries)
    with_line_2 = set(rng.sample(range(n_addresses), n_addresses // 3))
    with_district = set(rng.sample(range(n_addresses), n_addresses // 2 + 1))
    addresses = []
    for i in range(n_addresses):
        addresses.append(
            {
                "address_id": i + 1,
                "address_line_1": fake.street_address(),
                "address_line_2": fake.street_name() if i in with_line_2 else None,
                "district": uk.county() if i in with_district else None,
                "city": fake.city(),
                "postal_code": fake.zipcode_plus4() if rng.random() < 0.3 else fake.zipcode(),
                "country": countries[i],
                "phone": fake.numerify("#### ######"),
                **stamp,
            }
        )

    legal = rng.sample(range(1, n_addresses + 1), LEGAL_ADDRESSES)
    legal_ids = legal + [rng.choice(legal) for _ in range(STATIC_COUNTS["counterparty"] - len(legal))]
    rng.shuffle(legal_ids)
    names: set[str] = set()
    counterparties = []
    for i, address_id in enumerate(legal_ids):
        name = fake.company()
        while name in names:
            name = fake.company()
        names.add(name)
        counterparties.append(
            {
                "counterparty_id": i + 1,
                "counterparty_legal_name": name,
                "legal_address_id": address_id,
                "commercial_contact": fake.name() if rng.random() > 0.1 else None,
                "delivery_contact": fake.name() if rng.random() > 0.1 else None,
                **people_stamp,
            }
        )

    currencies = [{"currency_id": i + 1, "currency_code": code, **stamp} for i, code in enumerate(CURRENCY_CODES)]
    departments = [
        {
            "department_id": i + 1,
            "department_name": name,
            "location": DISPATCH_LOCATION if name == "Dispatch" else rng.choice(OFFICE_LOCATIONS),
            "manager": fake.name(),
            **stamp,
        }
        for i, name in enumerate(DEPARTMENT_NAMES)
    ]

    emails: set[str] = set()
    staff = []
    while len(staff) < STATIC_COUNTS["staff"]:
        first, last = fake.first_name(), fake.last_name()
        email = f"{_email_part(first)}.{_email_part(last)}@{EMAIL_DOMAIN}"
        if email in emails:
            continue
        emails.add(email)
        staff.append(
            {
                "staff_id": len(staff) + 1,
                "first_name": first,
                "last_name": last,
                "department_id": rng.randint(1, len(DEPARTMENT_NAMES)),
                "email_address": email,
                **people_stamp,
            }
        )

    payment_types = [
        {"payment_type_id": i + 1, "payment_type_name": name, **stamp} for i, name in enumerate(PAYMENT_TYPE_NAMES)
    ]
    designs = [new_design(rng, at, i + 1) for i in range(INITIAL_DESIGNS)]
    return {
        "address": addresses,
        "counterparty": counterparties,
        "currency": currencies,
        "department": departments,
        "design": designs,
        "staff": staff,
        "payment_type": payment_types,
    }


def _email_part(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch in string.ascii_lowercase)
