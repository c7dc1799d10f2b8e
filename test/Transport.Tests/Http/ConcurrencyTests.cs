using System.Net;
using System.Text;
using KestrelApp;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

public sealed class ConcurrencyTests
{
    [Fact]
    public async Task Concurrent_clients_mixing_keep_alive_and_connection_close_all_get_correct_responses()
    {
        const int Clients = 32;
        const int RequestsPerClient = 25;
        await using var server = await SampleServer.StartAsync();

        var workers = Enumerable.Range(0, Clients)
            .Select(clientIndex => Task.Run(() => RunClientAsync(server, clientIndex, RequestsPerClient), TestContext.Current.CancellationToken))
            .ToArray();
        var completed = await Task.WhenAll(workers).WaitAsync(TimeSpan.FromMinutes(2), TestContext.Current.CancellationToken);

        Assert.Equal(Clients * RequestsPerClient, completed.Sum());
        var closeRequests = Clients / 2 * RequestsPerClient;
        var counters = server.Counters;
        Assert.True(counters.ConnectionsAccepted >= closeRequests, $"accepted {counters.ConnectionsAccepted}, expected at least {closeRequests}");
        Assert.Equal(0, counters.AbortiveCloses);
        TestContext.Current.SendDiagnosticMessage(
            $"concurrency: accepted={counters.ConnectionsAccepted} created={counters.SocketsCreated} reused={counters.SocketsReused} " +
            $"graceful={counters.GracefulCloses} abortive={counters.AbortiveCloses} resets={counters.ConnectionResets}");
    }

    /// <summary>Even clients close after every request, odd ones keep their connection; returns the requests that succeeded.</summary>
    private static async Task<int> RunClientAsync(SampleServer server, int clientIndex, int requests)
    {
        var closing = clientIndex % 2 == 0;
        using var client = closing ? server.CreateClosingClient() : server.CreateKeepAliveClient(maxConnections: 1);
        var ct = TestContext.Current.CancellationToken;
        var succeeded = 0;
        for (var i = 0; i < requests; i++)
        {
            if (i % 2 == 0)
            {
                using var response = await client.GetAsync("/plaintext", ct);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Equal(SampleHost.PlaintextBody, await response.Content.ReadAsByteArrayAsync(ct));
            }
            else
            {
                // A body unique to this client and request, big enough to span several reads.
                var payload = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat($"client {clientIndex} request {i};", 2000)));
                using var content = new ByteArrayContent(payload);
                using var response = await client.PostAsync("/echo", content, ct);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Equal(payload, await response.Content.ReadAsByteArrayAsync(ct));
            }

            succeeded++;
        }

        return succeeded;
    }
}
