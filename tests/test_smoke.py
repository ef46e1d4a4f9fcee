"""The shortest end-to-end path: create an instance, run two steps, read the output."""

from hutch import WorkflowEntrypoint

from tests.conftest import MakeClient


class Hello(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("greet")
        async def greet():
            return f"hello {event.payload['name']}"

        greeting = await greet()
        shout = await step.do("shout", lambda: greeting.upper())
        return {"greeting": greeting, "shout": shout}


async def test_hello_completes_with_output(make_client: MakeClient) -> None:
    client = await make_client({"hello": Hello})
    instance = await client.workflow("hello").create(params={"name": "ada"})
    final = await instance.wait(timeout=10)
    assert final.status == "complete"
    assert final.output == {"greeting": "hello ada", "shout": "HELLO ADA"}
