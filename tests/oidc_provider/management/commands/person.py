from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Make a person of the directory, or change their password, names and groups."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--first-name", default="")
        parser.add_argument("--last-name", default="")
        parser.add_argument("--groups", default="", help="comma-separated")

    def handle(self, *args, username, password, email, first_name, last_name, groups, **options):
        user, _ = User.objects.update_or_create(
            username=username,
            defaults={"email": email, "first_name": first_name, "last_name": last_name},
        )
        user.set_password(password)
        user.save()
        names = [name for name in groups.split(",") if name]
        user.groups.set(Group.objects.get_or_create(name=name)[0] for name in names)
