"""Who is asking: users, passwords, bearer tokens, page sessions and API keys.

Passwords are stored as argon2id hashes (slow on purpose). Tokens, sessions and API keys are
random 256-bit secrets shaped `<kind>_<prefix>_<secret>`; only the SHA-256 digest of the whole
secret is stored, found by its public prefix and compared with `hmac.compare_digest`, so a
check costs microseconds and leaks no timing. Verified identities are cached for a few
seconds (`IdentityCache`); revoking a key, ending a session or disabling a user therefore takes
effect within about twice that time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from geo_service import audit, models, roles
from geo_service.errors import Conflict, InvalidInput, NotFound, TooManyAttempts, Unauthenticated

ROLES = roles.ROLES
PASSWORD_HASHER = PasswordHasher()
# A real hash to verify against when the user does not exist, so both cases cost the same.
_DUMMY_HASH = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))
# Failed sign-ins, counted over FAILED_SIGN_IN_WINDOW, slow further attempts down (see _throttle).
FAILED_SIGN_IN_WINDOW = dt.timedelta(minutes=15)
FAILED_SIGN_IN_LIMIT = 5  # for one account from one address
FAILED_SIGN_IN_LIMIT_PER_ADDRESS = 20  # from one address, any account; higher: an office behind one NAT address
FAILED_SIGN_IN_LIMIT_PER_ACCOUNT = 10  # for one account from every address together
ACCOUNT_WAIT_CAP = dt.timedelta(minutes=1)  # so that strangers elsewhere cannot keep the owner out
KNOWN_ADDRESS_AGE = dt.timedelta(days=30)  # the owner's recent addresses skip the account-wide back-off
# Sign-ins running at once in this process: argon2 takes ~64 MiB and a CPU for tens of ms, and a
# sign-in holds a database connection while it waits for its locks, so a flood of sign-ins must
# not take every connection from the rest of the API.
CONCURRENT_SIGN_INS = threading.BoundedSemaphore(4)
SIGN_IN_QUEUE_SECONDS = 10
# Advisory-lock key spaces (first key of pg_advisory_xact_lock(int, int)); addresses are always
# locked before accounts, so two sign-ins never wait for each other crosswise.
ADDRESS_LOCK_SPACE, ACCOUNT_LOCK_SPACE = 0x67730001, 0x67730002


@dataclass(frozen=True)
class Identity:
    """A verified caller. Never carries a secret."""

    kind: str  # "user" or "key"
    id: int
    name: str
    role: str
    towns: frozenset[str] | None  # None: every town
    grid_worker_id: int | None = None
    police_officer_id: int | None = None
    department_code: str | None = None  # role department: the department it speaks for

    def in_scope(self, town_code: str | None) -> bool:
        return self.towns is None or town_code in self.towns


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret(kind: str) -> tuple[str, str]:
    prefix = secrets.token_hex(6)
    return prefix, f"{kind}_{prefix}_{secrets.token_urlsafe(32)}"


def _split(secret: str) -> tuple[str, str] | None:
    parts = secret.split("_")
    if len(parts) < 3 or parts[0] not in ("gst", "gss", "gsk"):
        return None
    return parts[0], parts[1]


# --------------------------------------------------------------------------- users


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")


def _check_towns(session: Session, towns: list[str] | None) -> list[str] | None:
    if not towns:
        return None
    known = set(session.scalars(select(models.Town.code).where(models.Town.code.in_(towns))))
    unknown = [t for t in towns if t not in known]
    if unknown:
        raise InvalidInput(f"town {unknown[0]!r} does not exist")
    return sorted(set(towns))


def _check_password(password: str) -> None:
    if len(password) < 10:
        raise InvalidInput("password must have at least 10 characters")


def _check_department(session: Session, role: str, department: str | None) -> str | None:
    """A department account names its department (and only a department account does)."""
    if role != "department":
        if department is not None:
            raise InvalidInput(f"department {department!r} is for role department only, not {role!r}")
        return None
    if not department:
        raise InvalidInput("a department account must name its department (--department CODE)")
    if session.scalar(select(models.Department.id).where(models.Department.code == department)) is None:
        known = session.scalars(select(models.Department.code).order_by(models.Department.code)).all()
        raise InvalidInput(f"department {department!r} does not exist; known: {', '.join(known) or 'none loaded'}")
    return department


def create_user(session: Session, username: str, role: str, *, towns: list[str] | None = None,
                password: str | None = None, person_code: str | None = None, department: str | None = None,
                actor: audit.Actor = audit.CLI) -> tuple[models.AppUser, str]:
    """Create a user; returns it with its password (generated when none is given)."""
    username = username.strip().lower()
    _check_role(role)
    generated = password is None
    password = password if password is not None else secrets.token_urlsafe(12)
    _check_password(password)
    user = models.AppUser(username=username, password_hash=PASSWORD_HASHER.hash(password), role=role,
                          towns=_check_towns(session, towns),
                          department_code=_check_department(session, role, department))
    if person_code:
        worker = session.scalar(select(models.GridWorker).where(models.GridWorker.code == person_code))
        officer = session.scalar(select(models.PoliceOfficer).where(models.PoliceOfficer.code == person_code))
        if worker is None and officer is None:
            raise InvalidInput(f"person {person_code!r} is neither a grid worker nor a police officer")
        user.grid_worker_id = worker.id if worker else None
        user.police_officer_id = officer.id if officer else None
    elif role == "worker":
        raise InvalidInput("a worker account must be linked to a grid worker or police officer (--person CODE)")
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        if "app_user_username_format" in str(exc.orig):
            raise InvalidInput(f"username {username!r} must be 2-64 characters a-z, 0-9, '_', '.', '-'") from None
        raise Conflict(f"user {username!r} already exists") from None
    audit.record(session, actor, "user.create", "user", username,
                 detail={"role": role, "towns": user.towns, "department": user.department_code,
                         "generated_password": generated})
    session.commit()
    return user, password


def list_users(session: Session) -> list[models.AppUser]:
    return list(session.scalars(select(models.AppUser).order_by(models.AppUser.username)))


def set_disabled(session: Session, username: str, disabled: bool, actor: audit.Actor = audit.CLI) -> None:
    user = session.scalar(select(models.AppUser).where(models.AppUser.username == username.strip().lower()))
    if user is None:
        raise NotFound(f"user {username!r} does not exist")
    user.disabled = disabled
    if disabled:
        session.execute(update(models.AccessToken).where(models.AccessToken.user_id == user.id,
                                                         models.AccessToken.revoked_at.is_(None))
                        .values(revoked_at=func.now()))
    audit.record(session, actor, "user.disable" if disabled else "user.enable", "user", user.username)
    session.commit()


# --------------------------------------------------------------------------- API keys


def create_api_key(session: Session, name: str, role: str, *, towns: list[str] | None = None,
                   department: str | None = None, actor: audit.Actor = audit.CLI) -> tuple[models.ApiKey, str]:
    """Create a key; returns it with the secret, which is shown once and never stored."""
    _check_role(role)
    prefix, secret = _new_secret("gsk")
    key = models.ApiKey(name=name.strip(), prefix=prefix, digest=_digest(secret), role=role,
                        towns=_check_towns(session, towns),
                        department_code=_check_department(session, role, department))
    session.add(key)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"API key {name!r} already exists") from None
    audit.record(session, actor, "apikey.create", "api_key", key.name,
                 detail={"role": role, "towns": key.towns, "department": key.department_code})
    session.commit()
    return key, secret


def revoke_api_key(session: Session, name: str, actor: audit.Actor = audit.CLI) -> None:
    key = session.scalar(select(models.ApiKey).where(models.ApiKey.name == name.strip()))
    if key is None:
        raise NotFound(f"API key {name!r} does not exist")
    if key.revoked_at is None:
        key.revoked_at = dt.datetime.now(dt.UTC)
    audit.record(session, actor, "apikey.revoke", "api_key", key.name)
    session.commit()


def list_api_keys(session: Session) -> list[models.ApiKey]:
    return list(session.scalars(select(models.ApiKey).order_by(models.ApiKey.name)))


# --------------------------------------------------------------------------- signing in

@dataclass(frozen=True)
class BackOff:
    """Past `limit` recent failures, each attempt waits `first_wait` s after the last failure,
    doubling with every further failure, at most `max_wait` s."""

    what: str  # how the refusal names what was throttled
    limit: int
    first_wait: float
    max_wait: float

    def wait(self, failures: int) -> float:
        if failures < self.limit:
            return 0.0
        return min(self.first_wait * 2 ** min(failures - self.limit, 30), self.max_wait)


WINDOW_SECONDS = FAILED_SIGN_IN_WINDOW.total_seconds()
PAIR_BACK_OFF = BackOff("for {username!r} from this address", FAILED_SIGN_IN_LIMIT, 30, WINDOW_SECONDS)
ADDRESS_BACK_OFF = BackOff("from this address", FAILED_SIGN_IN_LIMIT_PER_ADDRESS, 30, WINDOW_SECONDS)
ACCOUNT_BACK_OFF = BackOff("for {username!r}", FAILED_SIGN_IN_LIMIT_PER_ACCOUNT, 30,
                           ACCOUNT_WAIT_CAP.total_seconds())

LOCK_SQL = text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))")
# Recent failures of this account and of this address: how many, and seconds since the last.
FAILURES_SQL = text("""
SELECT count(*) FILTER (WHERE object_id = :username AND address = :address) AS pair_n,
       extract(epoch FROM clock_timestamp() - max(at) FILTER (WHERE object_id = :username AND address = :address))
         AS pair_age,
       count(*) FILTER (WHERE address = :address) AS address_n,
       extract(epoch FROM clock_timestamp() - max(at) FILTER (WHERE address = :address)) AS address_age,
       count(*) FILTER (WHERE object_id = :username) AS account_n,
       extract(epoch FROM clock_timestamp() - max(at) FILTER (WHERE object_id = :username)) AS account_age
FROM audit_log
WHERE action = 'auth.sign_in' AND outcome = 'failed' AND at > now() - make_interval(secs => :window)
  AND (object_id = :username OR address = :address)
""")
KNOWN_ADDRESS_SQL = text("""
SELECT EXISTS (SELECT FROM audit_log
               WHERE action = 'auth.sign_in' AND outcome = 'ok' AND object_id = :username AND address = :address
                 AND at > now() - make_interval(secs => :age))
""")


def _lock_sign_ins(session: Session, username: str, address: str | None) -> None:
    """Serialise sign-ins from this address and for this account until the transaction ends.

    The failures are counted before the (slow) password check and the failure is written after
    it; without the locks a parallel burst would read the same count and every attempt would
    get its password checked.
    """
    if address is not None:
        session.execute(LOCK_SQL, {"space": ADDRESS_LOCK_SPACE, "key": address})
    session.execute(LOCK_SQL, {"space": ACCOUNT_LOCK_SPACE, "key": username})


def _throttle(session: Session, username: str, address: str | None) -> None:
    """Refuse a sign-in that comes too soon after too many recent failures.

    Three counts over FAILED_SIGN_IN_WINDOW: this account from this address and this address
    for any account back off exponentially (30 s, doubling, up to the window); this account
    from every address only for at most a minute, and not at all from an address it signed in
    from within KNOWN_ADDRESS_AGE, so that a stranger cannot lock its owner out.
    """
    row = session.execute(FAILURES_SQL, {"username": username, "address": address,
                                         "window": WINDOW_SECONDS}).one()
    waits = []
    for back_off, failures, age in ((PAIR_BACK_OFF, row.pair_n, row.pair_age),
                                    (ADDRESS_BACK_OFF, row.address_n, row.address_age),
                                    (ACCOUNT_BACK_OFF, row.account_n, row.account_age)):
        remaining = back_off.wait(failures) - float(age or 0)
        if remaining > 0:
            waits.append((remaining, back_off))
    if any(back_off is ACCOUNT_BACK_OFF for _, back_off in waits) and address is not None and session.execute(
            KNOWN_ADDRESS_SQL, {"username": username, "address": address,
                                "age": KNOWN_ADDRESS_AGE.total_seconds()}).scalar():
        waits = [wait for wait in waits if wait[1] is not ACCOUNT_BACK_OFF]
    if waits:
        remaining, back_off = max(waits, key=lambda wait: wait[0])
        retry_after = int(remaining) + 1
        raise TooManyAttempts(f"too many failed sign-ins {back_off.what.format(username=username)}; "
                              f"retry in {retry_after} s", retry_after=retry_after)


def sign_in(session: Session, username: str, password: str, *, kind: str, ttl: dt.timedelta,
            address: str | None) -> tuple[str, dt.datetime]:
    """Check a password and issue a bearer token or page session: (secret, expires_at)."""
    if not CONCURRENT_SIGN_INS.acquire(timeout=SIGN_IN_QUEUE_SECONDS):
        raise TooManyAttempts("too many sign-ins at once; retry in 5 s", retry_after=5)
    try:
        return _sign_in(session, username.strip().lower(), password, kind, ttl, address)
    finally:
        CONCURRENT_SIGN_INS.release()


def _sign_in(session: Session, username: str, password: str, kind: str, ttl: dt.timedelta,
             address: str | None) -> tuple[str, dt.datetime]:
    _lock_sign_ins(session, username, address)  # held until the commit that records the outcome
    try:
        _throttle(session, username, address)
    except TooManyAttempts:
        audit.record(session, audit.Actor("anonymous", None, None), "auth.sign_in", "user", username,
                     address=address, outcome="denied", detail={"kind": kind, "reason": "throttled"})
        session.commit()
        raise
    user = session.scalar(select(models.AppUser).where(models.AppUser.username == username))
    try:
        PASSWORD_HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
        ok = user is not None and not user.disabled
    except (VerificationError, InvalidHashError):
        ok = False
    actor = audit.Actor("user", user.id, user.username) if user else audit.Actor("anonymous", None, None)
    if not ok:
        audit.record(session, actor, "auth.sign_in", "user", username, address=address, outcome="failed",
                     detail={"kind": kind})
        session.commit()
        raise Unauthenticated("wrong username or password, or the account is disabled")
    prefix, secret = _new_secret("gst" if kind == "bearer" else "gss")
    expires_at = dt.datetime.now(dt.UTC) + ttl
    session.add(models.AccessToken(user_id=user.id, prefix=prefix, digest=_digest(secret), kind=kind,
                                   expires_at=expires_at))
    audit.record(session, actor, "auth.sign_in", "user", username, address=address, detail={"kind": kind})
    session.commit()
    return secret, expires_at


def sign_out(session: Session, secret: str) -> None:
    parsed = _split(secret)
    if parsed is None:
        return
    session.execute(update(models.AccessToken).where(models.AccessToken.prefix == parsed[1])
                    .values(revoked_at=func.now()))
    session.commit()


USER_TOKEN_SQL = text("""
SELECT t.digest, u.id, u.username, u.role, u.towns, u.grid_worker_id, u.police_officer_id, u.department_code
FROM access_token AS t JOIN app_user AS u ON u.id = t.user_id
WHERE t.prefix = :prefix AND t.kind = :kind AND t.revoked_at IS NULL AND t.expires_at > now()
  AND NOT u.disabled
""")
KEY_SQL = text("""
SELECT digest, id, name, role, towns, department_code FROM api_key WHERE prefix = :prefix AND revoked_at IS NULL
""")


def identify(session: Session, secret: str) -> Identity | None:
    """The identity behind a token, session or API key, or None when it is not valid now."""
    parsed = _split(secret)
    if parsed is None:
        return None
    kind, prefix = parsed
    if kind == "gsk":
        row = session.execute(KEY_SQL, {"prefix": prefix}).one_or_none()
        if row is None or not hmac.compare_digest(row.digest, _digest(secret)):
            return None
        return Identity("key", row.id, row.name, row.role, frozenset(row.towns) if row.towns else None,
                        department_code=row.department_code)
    row = session.execute(USER_TOKEN_SQL, {"prefix": prefix, "kind": "bearer" if kind == "gst" else "session"}
                          ).one_or_none()
    if row is None or not hmac.compare_digest(row.digest, _digest(secret)):
        return None
    return Identity("user", row.id, row.username, row.role, frozenset(row.towns) if row.towns else None,
                    row.grid_worker_id, row.police_officer_id, row.department_code)


RIDER_SQL = text("SELECT is_rider FROM grid_worker WHERE id = :id")


def reporter_kind(session: Session, identity: Identity) -> str | None:
    """What the caller reports as (intake's `reporter_kind`): a police account as police, a
    grid worker's as grid_worker, or rider when the worker is one of the delivery riders."""
    if identity.police_officer_id is not None:
        return "police"
    if identity.grid_worker_id is not None:
        return "rider" if session.execute(RIDER_SQL, {"id": identity.grid_worker_id}).scalar() else "grid_worker"
    return None


class IdentityCache:
    """Verified identities by secret digest.

    An entry is fresh for `ttl` seconds. For another `ttl` it is still answered, but marked for
    a re-check that the caller runs in the background (`due_for_check`), so a slow database
    never stalls requests that carry a known key; the re-check drops the entry when the key or
    token is no longer valid. Revocation therefore takes effect within about 2 x ttl. Misses
    are not cached.
    """

    def __init__(self, ttl: float):
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Identity]] = {}
        self._checking: set[str] = set()
        self._lock = threading.Lock()

    def get(self, secret: str) -> tuple[Identity | None, bool]:
        """(identity or None, whether a background re-check is due now)."""
        key = _digest(secret)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None or entry[0] + self._ttl < now:
            return None, False
        if entry[0] >= now:
            return entry[1], False
        with self._lock:
            due = key not in self._checking
            self._checking.add(key)
        return entry[1], due

    def put(self, secret: str, identity: Identity | None) -> None:
        """Store a verified identity, or (None) forget the secret."""
        key = _digest(secret)
        with self._lock:
            self._checking.discard(key)
            if identity is None:
                self._entries.pop(key, None)
                return
            if len(self._entries) > 10_000:
                now = time.monotonic() - self._ttl
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            self._entries[key] = (time.monotonic() + self._ttl, identity)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._checking.clear()


DEMO_USERS = roles.ROLES
DEMO_WORKER_SQL = text("""
SELECT w.code FROM grid_assignment AS a JOIN grid_worker AS w ON w.id = a.grid_worker_id
WHERE a.role = 'grid_leader' ORDER BY w.code LIMIT 1
""")


# The demo department account speaks for housing (出租屋) when the data has it, else the first.
DEMO_DEPARTMENT_SQL = text("SELECT code FROM department ORDER BY code <> 'housing', code LIMIT 1")


def create_demo_users(session: Session) -> list[tuple[str, str, str]]:
    """One user per role named demo-<role>, created only if none exists; (name, role, password)."""
    existing = set(session.scalars(select(models.AppUser.username).where(models.AppUser.username.like("demo-%"))))
    created = []
    for role in DEMO_USERS:
        name = f"demo-{role}"
        if name in existing:
            continue
        person = session.execute(DEMO_WORKER_SQL).scalar() if role == "worker" else None
        if role == "worker" and person is None:
            continue  # no grid worker loaded yet: nobody for a worker account to be
        department = session.scalar(DEMO_DEPARTMENT_SQL) if role == "department" else None
        if role == "department" and department is None:
            continue  # no department loaded yet: none for a department account to speak for
        _, password = create_user(session, name, role, person_code=person, department=department)
        created.append((name, role, password))
    return created
