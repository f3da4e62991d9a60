"""The login and logout pages (see ``server.ui.security`` for the session)."""

from __future__ import annotations

from aiohttp import web

from server.ui.render import render
from server.ui.security import SESSION, safe_next
from server.ui.window import BadParameter

routes = web.RouteTableDef()


@routes.get("/ui")
async def ui_root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


@routes.get("/ui/login")
async def login_page(request: web.Request) -> web.Response:
    target = safe_next(request.query.get("next"))
    if not request.app[SESSION].required:
        raise web.HTTPSeeOther(target)
    return render(request, "login.html", {"next": target, "error": None})


@routes.post("/ui/login")
async def login(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    try:
        form = await request.post()
    except ValueError as exc:  # not a form (bad UTF-8, a multipart body without its boundary)
        raise BadParameter(
            "the sign-in form could not be read; send it from the login page"
        ) from exc
    target = safe_next(str(form.get("next", "")))
    token = form.get("token")
    if not session.required:
        raise web.HTTPSeeOther(target)
    if not isinstance(token, str) or not token or not session.token_matches(token):
        context = {"next": target, "error": "That token is not the server's API token."}
        return render(request, "login.html", context, status=401)
    response = web.HTTPSeeOther(target)
    session.sign_in(request, response)
    raise response


@routes.post("/ui/logout")
async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/ui/login" if request.app[SESSION].required else "/ui/")
    request.app[SESSION].sign_out(response)
    raise response
