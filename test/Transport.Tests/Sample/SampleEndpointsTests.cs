using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;
using KestrelApp;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.Logging;

namespace Transport.Tests.Sample;

/// <summary>The sample's endpoints, in memory on TestServer: the HTTP surface without any transport.</summary>
public sealed class SampleEndpointsTests
{
    [Fact]
    public async Task Root_answers_with_a_text_greeting()
    {
        await using var app = await StartAsync("winsock");
        using var client = app.GetTestClient();

        using var response = await client.GetAsync("/", TestContext.Current.CancellationToken);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.Contains("/plaintext", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Plaintext_is_exactly_hello_world_with_its_content_length()
    {
        await using var app = await StartAsync("winsock");
        using var client = app.GetTestClient();

        using var response = await client.GetAsync("/plaintext", TestContext.Current.CancellationToken);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(13, response.Content.Headers.ContentLength);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        var body = await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken);
        Assert.Equal("Hello, World!"u8.ToArray(), body);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(1024 * 1024)]
    public async Task Echo_returns_the_request_body_and_its_content_type(int size)
    {
        await using var app = await StartAsync("winsock");
        using var client = app.GetTestClient();
        var body = RandomNumberGenerator.GetBytes(size);
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-test");

        using var response = await client.PostAsync("/echo", content, TestContext.Current.CancellationToken);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/x-test", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal(size, response.Content.Headers.ContentLength);
        Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task Stats_on_the_winsock_transport_reports_its_counters()
    {
        await using var app = await StartAsync("winsock");
        using var client = app.GetTestClient();

        using var json = await GetJsonAsync(client, "/stats");

        var root = json.RootElement;
        Assert.Equal("winsock", root.GetProperty("transport").GetString());
        var counters = root.GetProperty("counters");
        Assert.Equal(JsonValueKind.Object, counters.ValueKind);
        foreach (var name in new[] { "connectionsAccepted", "socketsCreated", "socketsReused", "gracefulCloses", "abortiveCloses", "connectionResets" })
        {
            Assert.Equal(JsonValueKind.Number, counters.GetProperty(name).ValueKind);
        }

        // TestServer never goes through the transport, so it accepted nothing.
        Assert.Equal(0, counters.GetProperty("connectionsAccepted").GetInt64());
        Assert.Equal(JsonValueKind.False, counters.GetProperty("reuseActive").ValueKind);
        Assert.Equal(0, root.GetProperty("outbound").GetProperty("connects").GetInt64());
    }

    [Fact]
    public async Task Stats_on_the_sockets_transport_names_it_and_has_no_counters()
    {
        await using var app = await StartAsync("sockets");
        using var client = app.GetTestClient();

        using var json = await GetJsonAsync(client, "/stats");

        Assert.Equal("sockets", json.RootElement.GetProperty("transport").GetString());
        Assert.False(json.RootElement.TryGetProperty("counters", out _));
        // The outbound side is the sample's on either transport.
        Assert.Equal(JsonValueKind.Number, json.RootElement.GetProperty("outbound").GetProperty("timeWaitCloses").ValueKind);
        Assert.Equal(JsonValueKind.Number, json.RootElement.GetProperty("outbound").GetProperty("recycledConnectRetries").ValueKind);
        // So is the process object, which build/bench.sh reads (the idle phase: the GC heap per held connection).
        var process = json.RootElement.GetProperty("process");
        Assert.True(process.GetProperty("gcHeapBytes").GetInt64() > 0);
        Assert.True(process.GetProperty("connections").GetInt64() >= 0);
    }

    [Theory]
    [InlineData("bogus")]
    [InlineData("")]
    public void An_unknown_transport_is_rejected_naming_the_option(string transport)
    {
        var ex = Assert.Throws<ArgumentException>(() => SampleHost.CreateBuilder(["--transport", transport]));

        Assert.Contains("--transport", ex.Message, StringComparison.Ordinal);
        Assert.Contains($"'{transport}'", ex.Message, StringComparison.Ordinal);
    }

    private static async Task<WebApplication> StartAsync(string transport)
    {
        var builder = SampleHost.CreateBuilder(["--transport", transport]);
        builder.Logging.ClearProviders();
        builder.WebHost.UseTestServer();
        var app = builder.Build();
        SampleHost.MapEndpoints(app);
        await app.StartAsync(TestContext.Current.CancellationToken);
        return app;
    }

    private static async Task<JsonDocument> GetJsonAsync(HttpClient client, string path)
    {
        using var response = await client.GetAsync(path, TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        await using var stream = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        return await JsonDocument.ParseAsync(stream, cancellationToken: TestContext.Current.CancellationToken);
    }
}
