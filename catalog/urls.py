"""Pages of the catalog app (rendered inside the admin shell)."""

app_name = "catalog"
urlpatterns: list = []
