"""A real OpenLDAP slapd of a test's own (Debian's `slapd` package): a config and an mdb
directory in the test's folder, loaded with slapadd, served on a free loopback port and
stopped by the PID it was started with.

The directory is a bank's: people under ou=people (inetOrgPerson, with passwords), groups
of type groupOfNames under ou=groups, and the portal's service account, which may read
people and groups but not passwords.
"""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import ldap

from deploy import services

SUFFIX = "dc=bank,dc=example"
ADMIN_DN, ADMIN_PASSWORD = f"cn=admin,{SUFFIX}", "admin-password-123"
SERVICE_DN, SERVICE_PASSWORD = f"cn=dropscore,ou=services,{SUFFIX}", "service-password-123"
PEOPLE, GROUPS = f"ou=people,{SUFFIX}", f"ou=groups,{SUFFIX}"
SCHEMA = Path("/etc/ldap/schema")
# Debian installs the servers under sbin, which a user's PATH may leave out.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

CONFIG = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
pidfile {folder}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb

database mdb
suffix "{suffix}"
rootdn "{admin_dn}"
rootpw {admin_password}
directory {folder}/data
maxsize 16777216
access to attrs=userPassword by anonymous auth by self write by * none
access to * by dn.exact="{service_dn}" read by self read by * none
"""


def person(uid: str, given: str, surname: str, password: str) -> str:
    return f"""\
dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {given} {surname}
givenName: {given}
sn: {surname}
mail: {uid}@bank.example
userPassword: {password}
"""


def group(name: str, *members: str) -> str:
    lines = "".join(f"member: uid={uid},{PEOPLE}\n" for uid in members)
    return f"dn: cn={name},{GROUPS}\nobjectClass: groupOfNames\ncn: {name}\n{lines}"


BASE = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: bank
o: Bank

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: dropscore
userPassword: {SERVICE_PASSWORD}
"""


def binary(name: str) -> str:
    """The path of slapd or slapadd, or an error that says how to get them."""
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None or not (SCHEMA / "core.schema").exists():
        raise RuntimeError(
            f"{name} is not installed: the directory sign-in tests run a real OpenLDAP "
            "server. Install Debian's packages (.ci/run does): "
            "apt-get install slapd ldap-utils"
        )
    return found


class Slapd:
    def __init__(self, folder: Path, entries: list[str]):
        self.folder = folder
        (folder / "data").mkdir(parents=True)
        self.config = folder / "slapd.conf"
        self.config.write_text(
            CONFIG.format(
                schema=SCHEMA,
                folder=folder,
                suffix=SUFFIX,
                admin_dn=ADMIN_DN,
                admin_password=ADMIN_PASSWORD,
                service_dn=SERVICE_DN,
            )
        )
        ldif = folder / "directory.ldif"
        ldif.write_text("\n".join([BASE, *entries]))
        subprocess.run(
            [binary("slapadd"), "-f", str(self.config), "-l", str(ldif)],
            check=True,
            capture_output=True,
        )
        self.port = services.free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.log = folder / "slapd.log"
        with self.log.open("wb") as log:
            # -d keeps it in the foreground: the PID is the server's own, to stop it by.
            self.process = subprocess.Popen(
                [binary("slapd"), "-f", str(self.config), "-h", f"{self.uri}/", "-d", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        services.wait_for(
            lambda: services.port_open("127.0.0.1", self.port),
            "slapd",
            10,
            self.process,
            self.log,
        )

    def admin(self) -> ldap.ldapobject.LDAPObject:
        connection = ldap.initialize(self.uri)
        connection.simple_bind_s(ADMIN_DN, ADMIN_PASSWORD)
        return connection

    def remove_member(self, name: str, uid: str) -> None:
        connection = self.admin()
        member = f"uid={uid},{PEOPLE}".encode()
        connection.modify_s(f"cn={name},{GROUPS}", [(ldap.MOD_DELETE, "member", [member])])
        connection.unbind_s()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
