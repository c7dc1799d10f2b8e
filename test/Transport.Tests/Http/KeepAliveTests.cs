using System.Net;
using System.Text;
using KestrelApp;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

public sealed class KeepAliveTests
{
    [Fact]
    public async Task Hundreds_of_requests_share_one_keep_alive_connection()
    {
        const int Requests = 200;
        await using var server = await SampleServer.StartAsync();
        using var client = server.CreateKeepAliveClient(maxConnections: 1);
        var ct = TestContext.Current.CancellationToken;

        for (var i = 0; i < Requests; i++)
        {
            if (i % 2 == 0)
            {
                using var response = await client.GetAsync("/plaintext", ct);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.False(response.Headers.ConnectionClose ?? false, $"request {i} asked to close the connection");
                Assert.Equal(SampleHost.PlaintextBody, await response.Content.ReadAsByteArrayAsync(ct));
            }
            else
            {
                var payload = Encoding.ASCII.GetBytes($"request {i} of {Requests}");
                using var content = new ByteArrayContent(payload);
                using var response = await client.PostAsync("/echo", content, ct);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Equal(payload, await response.Content.ReadAsByteArrayAsync(ct));
            }
        }

        var counters = server.Counters;
        Assert.Equal(1, counters.ConnectionsAccepted);
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.Equal(0, counters.ConnectionResets);
    }
}
