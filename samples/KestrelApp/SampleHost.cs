using System.Text;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Transport.Winsock;

namespace KestrelApp;

/// <summary>
/// The sample host, in two halves so tests can run it for real (Kestrel on a port) or in memory (TestHost):
/// <see cref="CreateBuilder"/> picks the transport and address, <see cref="MapEndpoints"/> adds the endpoints.
/// </summary>
public static class SampleHost
{
    /// <summary>The address served when neither --urls nor ASPNETCORE_URLS says otherwise.</summary>
    public const string DefaultUrl = "http://127.0.0.1:5000";

    /// <summary>The /plaintext body: 13 bytes.</summary>
    public static readonly byte[] PlaintextBody = "Hello, World!"u8.ToArray();

    /// <summary>
    /// A builder for the sample. <c>--transport winsock</c> (the default) runs Kestrel on the Winsock reuse
    /// transport, <c>--transport sockets</c> on Kestrel's own Sockets transport, for comparison.
    /// </summary>
    public static WebApplicationBuilder CreateBuilder(string[] args, Action<WinsockTransportOptions>? configureTransport = null)
    {
        // The content root is the app's own folder, so its appsettings.json applies from wherever it is started
        // (dotnet run --project samples/KestrelApp runs from the repository root).
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        var transport = builder.Configuration["transport"] ?? "winsock";
        switch (transport.ToLowerInvariant())
        {
            case "winsock":
                builder.WebHost.UseWinsockReuseTransport(configureTransport ?? (static _ => { }));
                break;
            case "sockets":
                break;
            default:
                throw new ArgumentException($"--transport must be 'winsock' or 'sockets'; it was '{transport}'.", nameof(args));
        }

        // The outbound side, on either transport: /outbound calls this server back through it.
        builder.Services.AddWinsockReuseConnectionFactory(static options => options.DeferFinTimeout = TimeSpan.FromSeconds(2));
        builder.Services.AddSingleton(static provider => new HttpClient(new SocketsHttpHandler
        {
            ConnectCallback = WinsockReuse.CreateConnectCallback(provider.GetRequiredService<WinsockOutboundConnectionFactory>()),
        }));

        if (builder.Configuration[WebHostDefaults.ServerUrlsKey] is null)
        {
            builder.WebHost.UseUrls(DefaultUrl);
        }

        // Counts connections on either transport for /stats (build/bench.sh divides by it); passes everything on.
        builder.WebHost.ConfigureKestrel(static kestrel => kestrel.ConfigureEndpointDefaults(static listen => listen.Use(static next => connection =>
        {
            Interlocked.Increment(ref s_connections);
            return next(connection);
        })));

        return builder;
    }

    private static long s_connections;

    /// <summary>
    /// The <c>process</c> object of /stats, the same on both transports: connections Kestrel handed to the app
    /// (all hosts in this process), bytes the GC has allocated, collections per generation, the working set,
    /// the thread pool work items completed (scheduling hops; per connection, a steadier figure than CPU),
    /// and the bytes on the GC heap now (live objects and garbage not yet collected; no collection is forced).
    /// </summary>
    public static object ProcessStats() => new
    {
        connections = Interlocked.Read(ref s_connections),
        allocatedBytes = GC.GetTotalAllocatedBytes(precise: true),
        gen0Collections = GC.CollectionCount(0),
        gen1Collections = GC.CollectionCount(1),
        gen2Collections = GC.CollectionCount(2),
        workingSet = Environment.WorkingSet,
        threadPoolWorkItems = ThreadPool.CompletedWorkItemCount,
        gcHeapBytes = GC.GetTotalMemory(forceFullCollection: false),
    };

    /// <summary>Adds the sample's endpoints: <c>/</c>, <c>/plaintext</c>, <c>POST /echo</c>, <c>/outbound</c> and <c>/stats</c>.</summary>
    public static void MapEndpoints(WebApplication app)
    {
        app.MapGet("/", () => Results.Text("Transport.Winsock sample: try /plaintext, POST /echo, /outbound or /stats.\n"));

        app.MapGet("/plaintext", static (HttpContext context) =>
        {
            context.Response.ContentType = "text/plain";
            context.Response.ContentLength = PlaintextBody.Length;
            return context.Response.Body.WriteAsync(PlaintextBody).AsTask();
        });

        app.MapPost("/echo", static async (HttpContext context) =>
        {
            context.Response.ContentType = context.Request.ContentType ?? "application/octet-stream";
            if (context.Request.ContentLength is long length)
            {
                context.Response.ContentLength = length;
            }

            await context.Request.Body.CopyToAsync(context.Response.Body, context.RequestAborted);
        });

        // A service calling another: ?count=N (1 to 100) GETs of this server's /plaintext, each on a new
        // connection (Connection: close), made by the outbound connection factory.
        app.MapGet("/outbound", static async (HttpContext context, HttpClient client, WinsockOutboundCounters outbound, int? count) =>
        {
            var requests = count ?? 1;
            if (requests is < 1 or > 100)
            {
                return Results.BadRequest("count must be between 1 and 100.");
            }

            // This server's own address (the one the request came in on), never one the request names.
            var local = context.Connection.LocalIpAddress ?? System.Net.IPAddress.Loopback;
            var target = new UriBuilder(context.Request.Scheme, local.ToString(), context.Connection.LocalPort, "/plaintext").Uri;
            for (var i = 0; i < requests; i++)
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, target);
                request.Headers.ConnectionClose = true;
                using var response = await client.SendAsync(request, context.RequestAborted);
                response.EnsureSuccessStatusCode();
                await response.Content.ReadAsByteArrayAsync(context.RequestAborted);
            }

            return Results.Json(new { requests, outbound });
        });

        app.MapGet("/stats", static (HttpContext context) =>
        {
            var counters = context.RequestServices.GetService<WinsockTransportCounters>();
            var outbound = context.RequestServices.GetRequiredService<WinsockOutboundCounters>();
            return counters is null
                ? Results.Json(new { transport = "sockets", outbound, process = ProcessStats() })
                : Results.Json(new { transport = "winsock", counters, outbound, process = ProcessStats() });
        });
    }

    /// <summary>The addresses the started server listens on (port 0 resolved).</summary>
    public static ICollection<string> ServerAddresses(WebApplication app)
        => app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses
           ?? throw new InvalidOperationException("The server has no addresses feature.");
}
